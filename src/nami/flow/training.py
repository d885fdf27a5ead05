"""Training targets: stage start/end points, flow samples, bridge pairs, and how a batch mixes stages.

A stage-k sample needs only the data at stage k's resolution (x_k) and one noise draw there (n_k): the
coarser levels are down(x_k) and noise_down(n_k), exactly the data and noise pyramids of `pyramid.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .pyramid import Generators, detail_band, detail_noise, down, noise_down, up
from .schedule import PyramidSchedule


class Bridge(Protocol):
    """What the flow needs of a BridgeFlow (`nami.bridges.BridgeFlow` implements it)."""

    kind: str
    adds_noise: bool  # draws its own fresh noise (renoise): no detail noise on top

    def __call__(self, u: torch.Tensor, k: int, generator: Generators = None) -> torch.Tensor:
        """Map u = Up(end of stage k-1) to the start of stage k."""

    def training_start(self, x_k: torch.Tensor, n_k: torch.Tensor, k: int, detail: bool = False) -> torch.Tensor:
        """start_k for training, from stage k's data x^(k) and noise n^(k) (the bridge's start law)."""


def interpolate(x: torch.Tensor, n: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The rectified-flow path x_sigma = (1 - sigma) x + sigma n (sigma = 1 noise, 0 data)."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        sigma = sigma.view(-1, *([1] * (x.ndim - 1)))
    return (1.0 - sigma) * x + sigma * n


def bridge_jump(
    z: torch.Tensor,
    k: int,
    schedule: PyramidSchedule,
    bridge: Bridge,
    detail: bool = False,
    generator: Generators = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Start of stage k from the end of stage k-1: Bridge_k(Up(z)) [+ e_(k-1) x detail noise].

    With `detail`, full-resolution noise detail at the previous end's level e_(k-1) is added after the bridge
    (see `detail_noise`): Up leaves a quarter of the degrees of freedom, so a deterministic jump hands the next
    stage a start that its flow cannot turn into white noise at the finer resolution. The detail is that of
    `noise` when given: training passes the stage's own draw n^(k), whose detail the end point e_k n^(k) +
    (1 - e_k) x^(k) carries too, so the path stays straight and its velocity predictable from z (independent
    detail in start and end would leave an irreducible part in the target). Sampling draws it fresh.
    """
    start = bridge(up(z), k, generator=generator)
    if detail and not bridge.adds_noise:
        if noise is None:
            band = detail_noise(start.shape, generator, device=start.device, dtype=start.dtype)
        else:
            band = detail_band(noise)
        start = start + schedule.end_sigmas[k - 1] * band
    return start


def previous_end(x_k: torch.Tensor, n_k: torch.Tensor, k: int, schedule: PyramidSchedule) -> torch.Tensor:
    """end_(k-1) = e_(k-1) n^(k-1) + (1 - e_(k-1)) x^(k-1), from stage k's data and noise through the pyramids."""
    return interpolate(down(x_k), noise_down(n_k), schedule.end_sigmas[k - 1])


def stage_endpoints(
    x_k: torch.Tensor,
    n_k: torch.Tensor,
    k: int,
    schedule: PyramidSchedule,
    bridge: Bridge | None,
    detail: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(start_k, end_k) from one data point and one noise draw at stage k's resolution.

    end_k = e_k n^(k) + (1 - e_k) x^(k); start_0 = n^(0); for k >= 1 the bridge's start law gives start_k
    (`Bridge.training_start`: bridge_jump(end_(k-1)) for a BridgeFlow, Pyramid Flow's corrected start for renoise).
    """
    end = interpolate(x_k, n_k, schedule.end_sigmas[k])
    if k == 0:
        return n_k, end
    if bridge is None:
        raise ValueError(f"stage {k} needs a bridge")
    return bridge.training_start(x_k, n_k, k, detail), end


@dataclass
class FlowSample:
    """One stage's training example: input z at local sigma', its model time, and the velocity target."""

    z: torch.Tensor
    model_time: torch.Tensor  # (B,) T fed to the network
    target: torch.Tensor  # start - end
    sigma_local: torch.Tensor  # (B,) sigma' in (0, 1)
    start: torch.Tensor
    end: torch.Tensor

    @classmethod
    def on_path(
        cls, start: torch.Tensor, end: torch.Tensor, sigma_local: torch.Tensor, model_time: torch.Tensor
    ) -> "FlowSample":
        """z = sigma' start + (1 - sigma') end, target v* = start - end."""
        return cls(interpolate(end, start, sigma_local), model_time, start - end, sigma_local, start, end)


def bridge_pair(
    x_k: torch.Tensor, n_k: torch.Tensor, k: int, schedule: PyramidSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """BridgeFlow MSE pair for the transition into stage k >= 1.

    Input u = Up(end_(k-1)); target y = e_(k-1) n^(k) + (1 - e_(k-1)) x^(k), the same noise level one
    resolution up.
    """
    if k < 1:
        raise ValueError("stage 0 has no incoming bridge")
    return up(previous_end(x_k, n_k, k, schedule)), interpolate(x_k, n_k, schedule.end_sigmas[k - 1])


@dataclass(frozen=True)
class StageMix:
    """How batches mix stages: `ratios` throughout, or the phases of a ratio schedule (the paper's dynamic
    weights); each phase is (start_step, ratios)."""

    ratios: tuple[float, ...] = (1.0, 1.0, 1.0)
    phases: tuple[tuple[int, tuple[float, ...]], ...] = ()

    @classmethod
    def from_config(cls, flow) -> "StageMix":
        """From a `FlowConfig` (stage_ratios, ratio_schedule)."""
        phases = tuple((p.start_step, tuple(p.ratios)) for p in flow.ratio_schedule)
        return cls(tuple(flow.stage_ratios), phases)

    def ratios_at(self, step: int) -> list[float]:
        """The ratios in force at `step`: the last phase started, else `ratios`."""
        ratios = list(self.ratios)
        for start, phase_ratios in self.phases:
            if step >= start:
                ratios = list(phase_ratios)
        return ratios

    def all_ratios(self) -> list[list[float]]:
        """Every set of ratios a run can meet."""
        return [list(self.ratios)] + [list(r) for _, r in self.phases]

    def phase_lengths(self, steps: int) -> list[tuple[list[float], int]]:
        """The ratios in force during `steps` training steps, each with its number of steps (phases that
        start at or after `steps` never run)."""
        phases = [(0, self.ratios), *self.phases]
        out = []
        for i, (start, ratios) in enumerate(phases):
            end = phases[i + 1][0] if i + 1 < len(phases) else steps
            length = min(end, steps) - min(start, steps)
            if length > 0:
                out.append((list(ratios), length))
        return out

    def rescaled(self, scale: float) -> "StageMix":
        """The phases moved to the same fractions of a budget `scale` times as long (starts rounded, kept
        strictly increasing): a schedule written for 1700 steps then still reaches every phase in 300."""
        phases, last = [], -1
        for start, ratios in self.phases:
            last = max(last + 1, round(start * scale))
            phases.append((last, ratios))
        return StageMix(self.ratios, tuple(phases))
