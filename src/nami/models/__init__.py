"""Networks: the nested MM-DiT, text encoders and autoencoders (no Lightning here)."""

from __future__ import annotations

from ..config import NamiConfig
from .autoencoder import Autoencoder, DiffusersKLAutoencoder, PixelAutoencoder, build_autoencoder
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
        stage_depths=m.stage_depths,
        text_dim=cfg.text_encoder.dim,
        pooled_dim=cfg.text_encoder.pooled_dim,
        mlp_ratio=m.mlp_ratio,
        rope_theta=m.rope_theta,
        qk_norm=m.qk_norm,
        nesting=m.nesting,
    )


__all__ = [
    "Autoencoder",
    "DiffusersKLAutoencoder",
    "DoubleStreamBlock",
    "HFTextEncoder",
    "LearnedTextEncoder",
    "NestedMMDiT",
    "PixelAutoencoder",
    "SingleStreamBlock",
    "TextEmbedding",
    "TextEncoder",
    "build_autoencoder",
    "build_model",
    "build_text_encoder",
]
