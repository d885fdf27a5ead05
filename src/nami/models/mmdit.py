"""The nested MM-DiT (FLUX-style): double-stream blocks, then single-stream blocks, one shared head.

Nesting: `stage_depths[k]` is the number of blocks (counted over [double..., single...]) that stage k runs;
every stage then uses the same final norm and head. Image tokens carry 2D RoPE on their stage's own grid,
text tokens sit at position (0, 0), where the rotation is the identity. With `rope_axes` the rotary dims
are split over position ids (0, row, col) as diffusers' FluxPosEmbed splits them (released NAMI-2B: 16/56/56).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import (
    MLPEmbedder,
    Modulation,
    QKNorm,
    apply_rope,
    attention,
    axis_rope_angles,
    image_positions,
    modulate,
    rope_angles,
    timestep_embedding,
)

_gelu = partial(nn.GELU, approximate="tanh")


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class StreamAttention(nn.Module):
    """One stream's QKV projection with QK RMSNorm (the attention itself is joint across streams)."""

    def __init__(self, width: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.norm = QKNorm(width // heads) if qk_norm else None
        self.proj = nn.Linear(width, width)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.norm is not None:
            q, k = self.norm(q, k)
        return q, k, v


class DoubleStreamBlock(nn.Module):
    """Separate weights for text and image tokens, joint attention over both."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.img_mod, self.txt_mod = Modulation(width, 6), Modulation(width, 6)
        self.img_norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.txt_norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.img_attn = StreamAttention(width, heads, qk_norm)
        self.txt_attn = StreamAttention(width, heads, qk_norm)
        self.img_norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.txt_norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.img_mlp = Mlp(width, hidden, act_layer=_gelu)
        self.txt_mlp = Mlp(width, hidden, act_layer=_gelu)

    def forward(self, img, txt, vec, angles, mask, update_text: bool = True):
        """`update_text=False` skips the text stream's output projection and MLP (nothing reads them) and
        returns None for the text stream."""
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        iq, ik, iv = self.img_attn.qkv_heads(modulate(self.img_norm1(img), i_shift1, i_scale1))
        tq, tk, tv = self.txt_attn.qkv_heads(modulate(self.txt_norm1(txt), t_shift1, t_scale1))
        q = apply_rope(torch.cat([tq, iq], dim=2), angles)
        k = apply_rope(torch.cat([tk, ik], dim=2), angles)
        out = attention(q, k, torch.cat([tv, iv], dim=2), mask)
        txt_out, img_out = out[:, : txt.shape[1]], out[:, txt.shape[1] :]
        img = img + i_gate1[:, None] * self.img_attn.proj(img_out)
        img = img + i_gate2[:, None] * self.img_mlp(modulate(self.img_norm2(img), i_shift2, i_scale2))
        if not update_text:
            # nothing reads the text stream after the last block; returning the input itself would make FSDP2
            # wrap it as a view of its input (a view whose in-place use would skip the block's all-gather)
            return img, None
        txt = txt + t_gate1[:, None] * self.txt_attn.proj(txt_out)
        txt = txt + t_gate2[:, None] * self.txt_mlp(modulate(self.txt_norm2(txt), t_shift2, t_scale2))
        return img, txt


class SingleStreamBlock(nn.Module):
    """One weight set over the joined [text; image] sequence: attention and MLP in parallel (FLUX)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.heads, self.width = heads, width
        self.hidden = int(width * mlp_ratio)
        self.mod = Modulation(width, 3)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear1 = nn.Linear(width, 3 * width + self.hidden)
        self.qk_norm = QKNorm(width // heads) if qk_norm else None
        self.linear2 = nn.Linear(width + self.hidden, width)

    def forward(self, x, vec, angles, mask):
        shift, scale, gate = self.mod(vec)
        qkv, mlp = self.linear1(modulate(self.norm(x), shift, scale)).split([3 * self.width, self.hidden], -1)
        q, k, v = (_split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        out = attention(apply_rope(q, angles), apply_rope(k, angles), v, mask)
        return x + gate[:, None] * self.linear2(torch.cat([out, F.gelu(mlp, approximate="tanh")], dim=-1))


class FinalLayer(nn.Module):
    """adaLN (shift, scale), LayerNorm, and the zero-initialised linear head back to patch values."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.mod = Modulation(width, 2)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x, vec):
        shift, scale = self.mod(vec)
        return self.linear(modulate(self.norm(x), shift, scale))


class NestedMMDiT(nn.Module):
    """Velocity network v(z, T, text) whose stage k runs only the first stage_depths[k] blocks."""

    def __init__(
        self,
        in_channels: int,
        patch_size: int,
        width: int,
        heads: int,
        double_blocks: int,
        single_blocks: int,
        stage_depths: list[int],
        text_dim: int,
        pooled_dim: int,
        mlp_ratio: float = 4.0,
        rope_theta: float = 10000.0,
        qk_norm: bool = True,
        rope_axes: list[int] | None = None,
    ):
        super().__init__()
        if stage_depths[-1] != double_blocks + single_blocks:
            raise ValueError(f"stage_depths {stage_depths} must end at {double_blocks + single_blocks}")
        self.in_channels, self.patch_size = in_channels, patch_size
        self.width, self.heads = width, heads
        self.stage_depths = list(stage_depths)  # blocks per stage, as ModelConfig.depth gives them
        self.rope_theta = rope_theta
        self.rope_axes = list(rope_axes) if rope_axes is not None else None  # None: two axes (row, col)
        self.img_in = nn.Linear(in_channels * patch_size**2, width)
        self.txt_in = nn.Linear(text_dim, width)
        self.time_in = MLPEmbedder(256, width)
        self.vector_in = MLPEmbedder(pooled_dim, width)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(width, heads, mlp_ratio, qk_norm) for _ in range(double_blocks)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(width, heads, mlp_ratio, qk_norm) for _ in range(single_blocks)
        )
        self.final = FinalLayer(width, in_channels * patch_size**2)
        self.grad_checkpointing = False  # recompute each block's activations in backward (saves memory)
        self.initialize_weights()

    @property
    def num_blocks(self) -> int:
        return len(self.double_blocks) + len(self.single_blocks)

    def blocks(self) -> list[nn.Module]:
        """All blocks in execution order: double-stream first, then single-stream."""
        return [*self.double_blocks, *self.single_blocks]

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) time embedder, zero adaLN modulations and head (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for layer in (self.time_in.fc1, self.time_in.fc2):
            nn.init.normal_(layer.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, Modulation):
                nn.init.zeros_(module.linear.weight)
                nn.init.zeros_(module.linear.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/p * W/p, C p p), row-major over the token grid."""
        p = self.patch_size
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Inverse of patchify for an h x w token grid."""
        p, c = self.patch_size, self.in_channels
        x = tokens.reshape(tokens.shape[0], h, w, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(tokens.shape[0], c, h * p, w * p)

    def depth_for(self, stage: int | None) -> int:
        """Blocks stage k runs; stage None (the uniform model, or sampling without nesting) runs all."""
        return self.num_blocks if stage is None else self.stage_depths[stage]

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        pooled: torch.Tensor,
        stage: int | None = None,
    ) -> torch.Tensor:
        """Predict the output for latent x (B, C, H, W) at model time `timestep` (B,) with stage k's first
        stage_depths[k] blocks (stage None: every block)."""
        depth = self.depth_for(stage)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        img = self.img_in(self.patchify(x))
        txt = self.txt_in(text_states)
        vec = self.time_in(timestep_embedding(timestep).to(img.dtype)) + self.vector_in(pooled)
        n_txt = txt.shape[1]
        angles = self.rope(n_txt, h, w, x.device)
        mask = None
        if text_mask is not None:  # (no check of text_mask.all() here: it would wait on the device every step)
            image_ok = torch.ones(x.shape[0], h * w, dtype=torch.bool, device=x.device)
            mask = torch.cat([text_mask.bool(), image_ok], dim=1)[:, None, None, :]

        n_double = min(depth, len(self.double_blocks))
        for i, block in enumerate(self.double_blocks[:n_double]):
            # when the stage ends on a double block, its text-stream update would feed nothing
            update_text = i < n_double - 1 or depth > n_double
            img, txt = self._run(block, img, txt, vec, angles, mask, update_text=update_text)
        if depth > n_double:
            seq = torch.cat([txt, img], dim=1)
            for block in self.single_blocks[: depth - n_double]:
                seq = self._run(block, seq, vec, angles, mask)
            img = seq[:, n_txt:]
        return self.unpatchify(self.final(img, vec), h, w)

    def rope(self, n_txt: int, h: int, w: int, device) -> torch.Tensor:
        """Rotation angles of the [text; image] sequence: text at position 0, image tokens at (row, col)."""
        text = torch.zeros(n_txt, 2, dtype=torch.long, device=device)
        positions = torch.cat([text, image_positions(h, w, device)])
        if self.rope_axes is None:
            return rope_angles(positions, self.width // self.heads, self.rope_theta)
        ids = torch.cat([torch.zeros_like(positions[:, :1]), positions], dim=1)  # (0, row, col)
        return axis_rope_angles(ids, self.rope_axes, self.rope_theta)

    def _run(self, block: nn.Module, *args, **kwargs):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    def stage_parameters(self, stage: int | None) -> list[nn.Parameter]:
        """Parameters that stage k's forward touches: embedders, its first blocks, the shared head."""
        used = [self.img_in, self.txt_in, self.time_in, self.vector_in, *self.blocks()[: self.depth_for(stage)]]
        return [p for module in [*used, self.final] for p in module.parameters()]
