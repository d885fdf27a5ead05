"""Progressive Euler sampling pieces: stage-0 noise, one stage's Euler loop, and what a sample leaves behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .grids import StageGrid
from .pyramid import noise_down

# velocity(z, sigma', T, k) -> v: the stage-local velocity at local sigma' (float) and model time T (float)
VelocityFn = Callable[[torch.Tensor, float, float, int], torch.Tensor]


def euler_stage(velocity: VelocityFn, z: torch.Tensor, k: int, grid: StageGrid) -> torch.Tensor:
    """Euler steps over the stage's grid: z <- z + (sigma'_next - sigma') v(z, sigma', T)."""
    for model_time, sigma, sigma_next in grid.steps():
        z = z + (sigma_next - sigma) * velocity(z, sigma, model_time, k).to(z.dtype)
    return z


@dataclass
class SampleTrace:
    """What progressive sampling produced: the final latent and, when kept, per stage its bridged start, its
    end, and the clean latent predicted at its last model call (x0 = z - sigma (n - x) on the path)."""

    final: torch.Tensor
    stage_starts: list[torch.Tensor] = field(default_factory=list)
    stage_ends: list[torch.Tensor] = field(default_factory=list)
    stage_predictions: list[torch.Tensor] = field(default_factory=list)


def initial_noise(
    shape: Sequence[int], num_stages: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Stage-0 noise: a full-resolution draw pooled K-1 times (same law as drawing at stage 0 directly)."""
    n = torch.randn(tuple(shape), generator=generator, device=device)
    for _ in range(num_stages - 1):
        n = noise_down(n)
    return n
