"""Constants and small utilities shared by the tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

# The tiny preset with the trainable byte-level text encoder: no model files to load.
LEARNED_TEXT = ["text_encoder.kind=learned", "text_encoder.dim=64", "text_encoder.pooled_dim=64"]
