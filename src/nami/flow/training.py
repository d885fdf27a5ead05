"""Training targets: stage start/end points, flow samples, bridge pairs, and how a batch mixes stages.

A stage-k sample needs only the data at stage k's resolution (x_k) and one noise draw there (n_k): the
coarser levels are down(x_k) and noise_down(n_k), exactly the data and noise pyramids of `pyramid.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .densities import sample_sigma_local
from .pyramid import Generators, detail_band, detail_noise, down, noise_down, up
from .schedule import PyramidSchedule


class Bridge(Protocol):
    """What the flow needs of a BridgeFlow: map Up(end of stage k-1) to the start of stage k."""

    kind: str
    adds_noise: bool  # draws its own fresh noise (renoise): no detail noise on top, and its own start point

    def __call__(self, u: torch.Tensor, k: int, generator: Generators = None) -> torch.Tensor: ...


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


def stage_endpoints(
    x_k: torch.Tensor,
    n_k: torch.Tensor,
    k: int,
    schedule: PyramidSchedule,
    bridge: Bridge | None,
    detail: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(start_k, end_k) from one data point and one noise draw at stage k's resolution.

    end_k = e_k n^(k) + (1 - e_k) x^(k); start_0 = n^(0); start_k = bridge_jump(end_(k-1)), except for a bridge
    that draws its own noise (renoise), whose start is c_k n^(k) + (1 - c_k) Up(x^(k-1)) (Pyramid Flow's
    corrected start, the point its jump lands on in law).
    """
    end = interpolate(x_k, n_k, schedule.end_sigmas[k])
    if k == 0:
        return n_k, end
    if bridge is None:
        raise ValueError(f"stage {k} needs a bridge")
    if bridge.adds_noise:
        return interpolate(up(down(x_k)), n_k, schedule.start_sigmas[k]), end
    prev_end = interpolate(down(x_k), noise_down(n_k), schedule.end_sigmas[k - 1])
    return bridge_jump(prev_end, k, schedule, bridge, detail, noise=n_k), end


@dataclass
class FlowSample:
    """One stage's training example: input z at local sigma', its model time, and the velocity target."""

    z: torch.Tensor
    model_time: torch.Tensor  # (B,) T fed to the network
    target: torch.Tensor  # start - end
    sigma_local: torch.Tensor  # (B,) sigma' in (0, 1)
    start: torch.Tensor
    end: torch.Tensor


def flow_sample(
    x_k: torch.Tensor,
    k: int,
    schedule: PyramidSchedule,
    bridge: Bridge | None,
    sigma_local: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    density: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    detail: bool = False,
) -> FlowSample:
    """z = sigma' start + (1 - sigma') end, target v* = start - end, T = the stage window at sigma'.

    Draws (in this order, from `generator`) the noise and then sigma' unless they are given.
    """
    if noise is None:
        noise = torch.randn(x_k.shape, generator=generator, device=x_k.device, dtype=x_k.dtype)
    if sigma_local is None:
        sigma_local = sample_sigma_local(x_k.shape[0], density, logit_mean, logit_std, generator, x_k.device)
    with torch.no_grad():  # the bridge is frozen during flow training
        start, end = stage_endpoints(x_k, noise, k, schedule, bridge, detail)
    z = interpolate(end, start, sigma_local)
    return FlowSample(z, schedule.model_time(k, sigma_local), start - end, sigma_local, start, end)


def bridge_pair(
    x_k: torch.Tensor, n_k: torch.Tensor, k: int, schedule: PyramidSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """BridgeFlow MSE pair for the transition into stage k >= 1.

    Input u = Up(end_(k-1)); target y = e_(k-1) n^(k) + (1 - e_(k-1)) x^(k), the same noise level one
    resolution up.
    """
    if k < 1:
        raise ValueError("stage 0 has no incoming bridge")
    e_prev = schedule.end_sigmas[k - 1]
    u = up(interpolate(down(x_k), noise_down(n_k), e_prev))
    return u, interpolate(x_k, n_k, e_prev)


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
