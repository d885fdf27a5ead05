"""Sampler timestep grids: per stage, the model times fed to the network and the local sigmas walked.

A grid for N Euler steps in stage k is N model times T_i and N + 1 local sigmas s_0 = 1 > ... > s_N = 0; step i
evaluates the network at T_i and moves z by (s_(i+1) - s_i) v. Each grid is a class registered under its
`sampler.timestep_grid` name (parameters, if a kind declares any, from `sampler.grid_params`); an instance is
called as grid(schedule, k, steps) -> StageGrid.

- `linear`: s = linspace(1, 0, N + 1) over the continuous window, T_i = the window's time at s_i.
- `official`: the released NAMI-2B scheduler. Integer windows ([1000, 744], [744, 386], [386, 1] for thirds);
  with M = T_start - T_end integer timesteps in the window, T = linspace(T_start, T_end + 1, N) and
  s = linspace(1, 1/M, N) followed by 0, so the last step jumps from 1/M straight to the stage's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import TIMESTEP_GRIDS, Component
from .schedule import PyramidSchedule


@dataclass(frozen=True)
class StageGrid:
    """One stage's Euler grid, on the host (no device sync inside the sampling loop)."""

    model_times: tuple[float, ...]  # N
    sigmas: tuple[float, ...]  # N + 1, from 1 down to 0

    def __post_init__(self):
        if len(self.sigmas) != len(self.model_times) + 1:
            raise ValueError(f"{len(self.model_times)} model times need {len(self.model_times) + 1} sigmas")

    def steps(self):
        """(T, sigma', next sigma') for every Euler step."""
        return zip(self.model_times, self.sigmas[:-1], self.sigmas[1:])


def _linspace(start: float, end: float, n: int) -> list[float]:
    return torch.linspace(start, end, n, dtype=torch.float64).tolist()


class TimestepGrid(Component):
    """The Euler grid of stage k of a schedule for a number of steps."""

    def __call__(self, schedule: PyramidSchedule, k: int, steps: int) -> StageGrid:
        if steps < 1:
            raise ValueError(f"stage {k} needs at least one step, got {steps}")
        return self.stage_grid(schedule, k, steps)

    def stage_grid(self, schedule: PyramidSchedule, k: int, steps: int) -> StageGrid:
        raise NotImplementedError


@TIMESTEP_GRIDS.register("linear")
class LinearGrid(TimestepGrid):
    """Equal sigma' steps over the continuous model-time window."""

    def stage_grid(self, schedule, k, steps):
        sigmas = _linspace(1.0, 0.0, steps + 1)
        return StageGrid(tuple(schedule.model_time(k, s) for s in sigmas[:-1]), tuple(sigmas))


@TIMESTEP_GRIDS.register("official")
class OfficialGrid(TimestepGrid):
    """The released model's grid on integer windows (see the module docstring)."""

    def stage_grid(self, schedule, k, steps):
        t_start, t_end = schedule.integer_model_time_windows[k]
        m = t_start - t_end
        sigmas = _linspace(1.0, 1.0 / m, steps) + [0.0]
        return StageGrid(tuple(_linspace(t_start, t_end + 1, steps)), tuple(sigmas))
