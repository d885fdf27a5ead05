"""Training targets: in-window timestep densities, stage start/end points, flow samples, bridge pairs.

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
    """What the flow needs of a BridgeFlow: map Up(end of stage k-1) to the start of stage k."""

    kind: str
    adds_noise: bool  # draws its own fresh noise (renoise): no detail noise on top

    def __call__(self, u: torch.Tensor, k: int, generator: Generators = None) -> torch.Tensor: ...


def interpolate(x: torch.Tensor, n: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The rectified-flow path x_sigma = (1 - sigma) x + sigma n (sigma = 1 noise, 0 data)."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        sigma = sigma.view(-1, *([1] * (x.ndim - 1)))
    return (1.0 - sigma) * x + sigma * n


def sample_local_sigma(
    batch: int,
    density: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """sigma' in (0, 1) inside a stage window: logit-normal(mean, std) (SD3's default) or uniform."""
    if density == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    if density == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"unknown timestep density {density!r}")


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
    if detail and not getattr(bridge, "adds_noise", False):
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
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(start_k, end_k) from one data point and one noise draw at stage k's resolution.

    end_k = e_k n^(k) + (1 - e_k) x^(k); start_0 = n^(0); start_k = bridge_jump(end_(k-1)), except for the
    renoise kind, whose start is c_k n^(k) + (1 - c_k) Up(x^(k-1)) (Pyramid Flow's corrected start).
    """
    end = interpolate(x_k, n_k, schedule.end_sigmas[k])
    if k == 0:
        return n_k, end
    if bridge is None:
        raise ValueError(f"stage {k} needs a bridge")
    if getattr(bridge, "kind", None) == "renoise":
        return interpolate(up(down(x_k)), n_k, schedule.start_sigmas[k]), end
    prev_end = interpolate(down(x_k), noise_down(n_k), schedule.end_sigmas[k - 1])
    return bridge_jump(prev_end, k, schedule, bridge, detail, generator, noise=n_k), end


@dataclass
class FlowSample:
    """One stage's training example: model input z at sigma', its model time, and the velocity target."""

    z: torch.Tensor
    timestep: torch.Tensor
    target: torch.Tensor
    sigma: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor


def flow_sample(
    x_k: torch.Tensor,
    k: int,
    schedule: PyramidSchedule,
    bridge: Bridge | None,
    sigma: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    density: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    detail: bool = False,
) -> FlowSample:
    """z = sigma' start + (1 - sigma') end, target v* = start - end, T = the stage window at sigma'."""
    if noise is None:
        noise = torch.randn(x_k.shape, generator=generator, device=x_k.device, dtype=x_k.dtype)
    if sigma is None:
        sigma = sample_local_sigma(x_k.shape[0], density, logit_mean, logit_std, generator, x_k.device)
    with torch.no_grad():  # the bridge is frozen during flow training
        start, end = stage_endpoints(x_k, noise, k, schedule, bridge, detail, generator)
    z = interpolate(end, start, sigma)
    timestep = schedule.model_time(k, sigma)
    return FlowSample(z=z, timestep=timestep, target=start - end, sigma=sigma, start=start, end=end)


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


def stage_ratios_at(step: int, stage_ratios, ratio_schedule) -> list[float]:
    """Stage mixing ratios in force at `step`: the last schedule phase started, else `stage_ratios`."""
    ratios = list(stage_ratios)
    for phase in ratio_schedule:
        if step >= phase.start_step:
            ratios = list(phase.ratios)
    return ratios

