"""Progressive Euler sampling across stages, with batched classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .pyramid import Generators, noise_down
from .schedule import PyramidSchedule
from .training import Bridge, bridge_jump

# velocity(z, model_time (B,), stage) -> v, with v = noise - data in the stage's local coordinate
VelocityFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def guided(batched_velocity: VelocityFn, scale: float) -> VelocityFn:
    """Classifier-free guidance v = v_u + w (v_c - v_u) in one forward over the doubled batch.

    `batched_velocity` sees [z; z] and must condition its first half on the prompts, its second half on the
    empty prompt.
    """

    def velocity(z: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        v_cond, v_uncond = batched_velocity(torch.cat([z, z]), torch.cat([t, t]), k).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return velocity


def euler_stage(
    velocity: VelocityFn, z: torch.Tensor, k: int, schedule: PyramidSchedule, steps: int
) -> torch.Tensor:
    """N Euler steps over sigma' from 1 to 0 inside stage k: z <- z + (sigma'_next - sigma') v."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        t = torch.full((z.shape[0],), schedule.model_time(k, sigma), device=z.device, dtype=torch.float32)
        v = velocity(z, t, k)
        z = z + (sigma_next - sigma) * v.to(z.dtype)
    return z


@dataclass
class SampleTrace:
    """What progressive sampling produced: the final latent, each stage's end and bridged start."""

    final: torch.Tensor
    stage_starts: list[torch.Tensor] = field(default_factory=list)
    stage_ends: list[torch.Tensor] = field(default_factory=list)


def initial_noise(
    shape: Sequence[int], num_stages: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Stage-0 noise: a full-resolution draw pooled K-1 times (same law as drawing at stage 0 directly)."""
    n = torch.randn(tuple(shape), generator=generator, device=device)
    for _ in range(num_stages - 1):
        n = noise_down(n)
    return n


def progressive_sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    schedule: PyramidSchedule,
    steps: Sequence[int],
    bridge: Bridge | None,
    generator: Generators = None,
    keep_stages: bool = False,
    detail: bool = False,
) -> SampleTrace:
    """Stage 0 from `noise` (at stage 0's resolution); before stage k > 0, z <- Bridge_k(Up(z)) (plus detail
    noise with `detail`, as in training: see `bridge_jump`).

    `keep_stages` keeps each stage's start and end (for stage-by-stage inspection).
    """
    if len(steps) != schedule.num_stages:
        raise ValueError(f"need {schedule.num_stages} step counts, got {list(steps)}")
    trace = SampleTrace(final=noise)
    z = noise
    for k, n_steps in enumerate(steps):
        if k > 0:
            z = bridge_jump(z, k, schedule, bridge, detail, generator)
        if keep_stages:
            trace.stage_starts.append(z)
        z = euler_stage(velocity, z, k, schedule, n_steps)
        if keep_stages:
            trace.stage_ends.append(z)
    trace.final = z
    return trace
