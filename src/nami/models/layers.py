"""Building blocks of the MM-DiT: embeddings, 2D RoPE, QK RMSNorm, attention, adaLN modulation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of model time T (0..1000), as in DiT / FLUX."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class MLPEmbedder(nn.Module):
    """in -> width -> width with SiLU: maps the time embedding and the pooled text vector to the width."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class RMSNorm(nn.Module):
    """RMSNorm whose weight follows the activation dtype (a float32 weight on bf16 input takes a slow path)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # .to(x.dtype): autocast may run rms_norm in float32; keep q, k in the dtype of v.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps).to(x.dtype)


class QKNorm(nn.Module):
    """Separate RMSNorms over the head dimension of queries and keys (stabilises attention logits)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.q = RMSNorm(head_dim)
        self.k = RMSNorm(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q(q), self.k(k)


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles (N, head_dim/2) for 2D positions (N, 2): half the rotary pairs per axis."""
    axis_pairs = head_dim // 4
    inv_freq = theta ** (-torch.arange(axis_pairs, device=positions.device, dtype=torch.float32) / axis_pairs)
    rows = positions[:, 0:1].float() * inv_freq
    cols = positions[:, 1:2].float() * inv_freq
    return torch.cat([rows, cols], dim=-1)


def axis_rope_angles(ids: torch.Tensor, axes: list[int], theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles (N, sum(axes)/2) for position ids (N, len(axes)), as diffusers' FluxPosEmbed computes
    them: axis i rotates its axes[i]/2 consecutive pairs at frequencies theta^(-arange(0, d, 2)/d), in float64
    (cos and sin are rounded to float32 only in `apply_rope`), so the rotations match diffusers' exactly."""
    # MPS has no float64 (diffusers falls back the same way)
    dtype = torch.float32 if ids.device.type == "mps" else torch.float64
    pos = ids.to(dtype)
    out = []
    for i, dim in enumerate(axes):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=dtype, device=ids.device) / dim))
        out.append(pos[:, i : i + 1] * freqs[None])
    return torch.cat(out, dim=-1)


def image_positions(h: int, w: int, device=None) -> torch.Tensor:
    """(row, col) of every token on an h x w grid, row-major: (h*w, 2)."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack([rows, cols], dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, H, N, D) by angles (N, D/2); computed in float32 at least (float64
    angles: cos and sin are taken in float64, then rounded to the compute dtype, as diffusers does)."""
    compute = torch.promote_types(x.dtype, torch.float32)  # float32 for half inputs, float64 stays float64
    pairs = x.to(compute).unflatten(-1, (-1, 2))
    cos, sin = angles.cos().to(compute), angles.sin().to(compute)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, N, D); mask (B, 1, 1, N) bool, True = attend. -> (B, N, H*D)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (B, D) modulation broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Modulation(nn.Module):
    """SiLU -> Linear producing `chunks` (B, D) vectors from the conditioning vector (adaLN-Zero)."""

    def __init__(self, width: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(width, chunks * width)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(vec)).chunk(self.chunks, dim=-1)
