"""Networks: the nested MM-DiT, text encoders and autoencoders (no Lightning here)."""

from __future__ import annotations

from ..config import NamiConfig
from .autoencoder import Autoencoder, DiffusersKLAutoencoder, PixelAutoencoder, build_autoencoder
from .cost import ForwardCost, bucket_costs, cost_summary, forward_cost, image_tokens, predicted_ratio, uniform_cost
from .mmdit import DoubleStreamBlock, NestedMMDiT, SingleStreamBlock
from .text import HFTextEncoder, LearnedTextEncoder, TextEmbedding, TextEncoder, build_text_encoder


def build_model(cfg: NamiConfig) -> NestedMMDiT:
    """The MM-DiT the config describes (build under `torch.device('meta')` to count without allocating)."""
    m = cfg.model
    return NestedMMDiT(
        in_channels=cfg.autoencoder.channels,
        patch_size=m.patch_size,
        width=m.width,
        heads=m.heads,
        double_blocks=m.double_blocks,
        single_blocks=m.single_blocks,
        stage_depths=[m.depth(k) for k in range(cfg.num_stages)],
        text_dim=cfg.text_encoder.dim,
        pooled_dim=cfg.text_encoder.pooled_dim,
        mlp_ratio=m.mlp_ratio,
        rope_theta=m.rope_theta,
        qk_norm=m.qk_norm,
        rope_axes=m.rope_axes,
    )


def model_fn(model: NestedMMDiT, nested: bool = True):
    """The network as `PyramidFlow` calls it: (z, model_time, k, text) -> output, text a `TextEmbedding`.
    `nested=False` runs every block in every stage (sampling without nesting)."""

    def call(z, model_time, k, text):
        return model(z, model_time, text.states, text.mask, text.pooled, stage=k if nested else None)

    return call


__all__ = [
    "Autoencoder",
    "DiffusersKLAutoencoder",
    "DoubleStreamBlock",
    "ForwardCost",
    "HFTextEncoder",
    "LearnedTextEncoder",
    "NestedMMDiT",
    "PixelAutoencoder",
    "SingleStreamBlock",
    "TextEmbedding",
    "TextEncoder",
    "bucket_costs",
    "build_autoencoder",
    "build_model",
    "build_text_encoder",
    "cost_summary",
    "forward_cost",
    "image_tokens",
    "model_fn",
    "predicted_ratio",
    "uniform_cost",
]
