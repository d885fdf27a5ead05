"""`TextEmbedding`: what a text encoder gives and the MM-DiT reads, from a precomputed shard to the model.

A leaf of the kit (it imports torch alone), so that the data side can hold embeddings without importing the
text encoders (and with them `transformers`) in every DataLoader worker. `nami.models` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class TextEmbedding:
    """states (B, L, dim), mask (B, L) bool (True = real token; None after `for_attention` when all are),
    pooled (B, pooled_dim). One sample's embedding (`row`) is the same without the batch dimension."""

    states: torch.Tensor
    mask: torch.Tensor | None
    pooled: torch.Tensor

    def to(self, device: torch.device | str) -> TextEmbedding:
        return self.map(lambda t: t.to(device))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TextEmbedding:
        """`fn` applied to each tensor (a missing mask stays missing)."""
        return TextEmbedding(fn(self.states), None if self.mask is None else fn(self.mask), fn(self.pooled))

    def for_attention(self) -> TextEmbedding:
        """This embedding with mask None when every token is real (the MM-DiT then attends without a mask, and
        SDPA may take its fastest kernels). Reads the mask on the host once: call it once per prompt batch,
        not per forward, so the sampling loop never waits on the device."""
        return TextEmbedding(self.states, None, self.pooled) if bool(self.mask.all()) else self

    def row(self, i: int) -> TextEmbedding:
        """Sample `i` of the batch, without the batch dimension."""
        return self.map(lambda t: t[i])

    @staticmethod
    def stack(rows: list[TextEmbedding]) -> TextEmbedding:
        """Rows (as `row` gives them) -> one batch."""
        return TextEmbedding(*(torch.stack([getattr(r, f) for r in rows]) for f in ("states", "mask", "pooled")))

    @staticmethod
    def cat(items: list[TextEmbedding]) -> TextEmbedding:
        return TextEmbedding(*(torch.cat([getattr(e, f) for e in items]) for f in ("states", "mask", "pooled")))
