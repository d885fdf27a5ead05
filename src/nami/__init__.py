"""NAMI kit: multi-stage rectified flow with a nested MM-DiT and learnable BridgeFlow (see DESIGN.md).

`nami.NamiPipeline` is the notebook entry point (a model directory -> PIL images); it is imported on first use,
so `import nami` (and with it the `nami` command's start) stays light.
"""

from __future__ import annotations

__all__ = ["NamiPipeline"]


def __getattr__(name: str):
    if name == "NamiPipeline":
        from .sampling.hub import NamiPipeline

        return NamiPipeline
    raise AttributeError(f"module 'nami' has no attribute {name!r}")
