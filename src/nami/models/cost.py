"""Analytic FLOP model of the nested MM-DiT and the predicted progressive / uniform sampling time ratio.

Counts multiply-adds as 2 FLOPs in every matrix product (linear layers, QK^T and AV), like
torch.utils.flop_counter; norms, RoPE, activations and the text encoder (run once per prompt, not per
step) are left out. Text tokens are counted in attention and in the text stream's linears. Every cost takes an
image `size` (height, width) in pixels, an aspect-ratio bucket (`nami.config.buckets`); None is the square
resolution x resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import NamiConfig
from ..config.buckets import bucket_table, stage_latent_shapes

Size = tuple[int, int] | None  # (height, width) in pixels; None: resolution x resolution

TIME_EMBED_DIM = 256  # sinusoidal width fed to the time embedder (models/layers.py)


@dataclass(frozen=True)
class ForwardCost:
    """FLOPs of one forward for one sample, split into linear-layer and attention terms."""

    image_tokens: int
    text_tokens: int
    blocks: int
    linear: int
    attention: int

    @property
    def total(self) -> int:
        return self.linear + self.attention


def image_tokens(cfg: NamiConfig, stage: int, size: Size = None) -> int:
    """Image tokens at stage k: (latent height / patch) x (latent width / patch) for an image of `size` pixels."""
    h, w = stage_latent_shapes(cfg, *(size or (cfg.resolution, cfg.resolution)))[stage]
    return (h // cfg.model.patch_size) * (w // cfg.model.patch_size)


def forward_cost(cfg: NamiConfig, stage: int, nested: bool = True, size: Size = None) -> ForwardCost:
    """One forward at stage k's resolution through its blocks (`ModelConfig.depth`: every block unless
    `nested`), for an image of `size` pixels."""
    m = cfg.model
    d, hidden = m.width, int(m.width * m.mlp_ratio)
    patch_dim = cfg.autoencoder.channels * m.patch_size**2
    n_img, n_txt = image_tokens(cfg, stage, size), cfg.text_encoder.max_length
    n = n_img + n_txt
    depth = m.depth(stage, nested)
    n_double = min(depth, m.double_blocks)
    n_single = depth - n_double

    # embedders: patches, text states, time (sinusoid -> d -> d), pooled text (-> d -> d), per sample
    linear = n_img * patch_dim * d + n_txt * cfg.text_encoder.dim * d
    linear += TIME_EMBED_DIM * d + d * d + cfg.text_encoder.pooled_dim * d + d * d
    # double-stream block: per stream adaLN (6d), qkv, proj and MLP over that stream's tokens
    per_double = 2 * 6 * d * d + n * (3 * d * d + d * d + 2 * d * hidden)
    # single-stream block: adaLN (3d), fused qkv + MLP-in, fused attention-out + MLP-out
    per_single = 3 * d * d + n * (d * (3 * d + hidden) + (d + hidden) * d)
    linear += n_double * per_double + n_single * per_single
    if n_double and not n_single:  # the last double block skips its unused text-stream update
        linear -= n_txt * (d * d + 2 * d * hidden)
    # final layer: adaLN (2d) and the head over image tokens
    linear += 2 * d * d + n_img * d * patch_dim
    attention = depth * 2 * n * n * d  # QK^T and AV over the joint sequence, all heads
    return ForwardCost(n_img, n_txt, depth, 2 * linear, 2 * attention)


def uniform_cost(cfg: NamiConfig, size: Size = None) -> ForwardCost:
    """The uniform baseline's forward: full resolution, every block."""
    return forward_cost(cfg, cfg.num_stages - 1, nested=False, size=size)


def predicted_ratio(cfg: NamiConfig, steps=None, uniform_steps: int | None = None, nesting: bool = True,
                    size: Size = None) -> float:  # fmt: skip
    """Progressive over uniform sampling time, taking time proportional to FLOPs.

    Progressive: sum_k N_k F_k (F_k with stage k's own depth, or every block when `nesting` is off);
    uniform: N_u F_full. Classifier-free guidance doubles both sides and cancels.
    """
    steps = list(cfg.sampler.steps if steps is None else steps)
    uniform_steps = cfg.sampler.uniform_steps if uniform_steps is None else uniform_steps
    progressive = sum(n * forward_cost(cfg, k, nesting, size).total for k, n in enumerate(steps))
    return progressive / (uniform_steps * uniform_cost(cfg, size).total)


def cost_summary(cfg: NamiConfig) -> dict:
    """Per-stage costs and ratios as plain numbers (for `nami info`)."""
    stages = [forward_cost(cfg, k) for k in range(cfg.num_stages)]
    cfg_factor = 1 if cfg.sampler.guidance == 1.0 else 2  # guided steps run the doubled batch
    return {
        "tokens_per_stage": [c.image_tokens for c in stages],
        "text_tokens": cfg.text_encoder.max_length,
        "flops_per_forward_per_stage": [c.total for c in stages],
        "flops_per_step_per_stage": [cfg_factor * c.total for c in stages],
        "flops_breakdown_per_stage": [asdict(c) for c in stages],
        "flops_per_step_uniform": cfg_factor * uniform_cost(cfg).total,
        "predicted_ratio": predicted_ratio(cfg),
        "predicted_ratio_no_nesting": predicted_ratio(cfg, nesting=False),
    }


def bucket_costs(cfg: NamiConfig) -> list[dict]:
    """Per bucket of `data.buckets` (`nami info`): its size, latent shape, image tokens and FLOPs per step of every
    stage, and the predicted progressive/uniform ratio at that size."""
    cfg_factor = 1 if cfg.sampler.guidance == 1.0 else 2
    out = []
    for bucket in bucket_table(cfg):
        size = (bucket.height, bucket.width)
        stages = [forward_cost(cfg, k, size=size) for k in range(cfg.num_stages)]
        out.append({
            "height": bucket.height,
            "width": bucket.width,
            "aspect": bucket.aspect,
            "latent_shapes": [list(s) for s in bucket.latent_shapes(cfg)],
            "tokens_per_stage": [c.image_tokens for c in stages],
            "flops_per_step_per_stage": [cfg_factor * c.total for c in stages],
            "flops_per_step_uniform": cfg_factor * uniform_cost(cfg, size).total,
            "predicted_ratio": predicted_ratio(cfg, size=size),
        })  # fmt: skip
    return out
