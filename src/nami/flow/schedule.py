"""The pyramid schedule: stage boundaries in sigma, corrected starts, model-time windows, renoise coefficients.

Convention (diffusers / SD3 / official NAMI): sigma = 1 is pure noise, sigma = 0 is data. Inside stage k a
local coordinate sigma' runs 1 -> 0 from the stage's start point to its end point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class PyramidSchedule:
    """Where each stage starts and ends, in sigma and in model time."""

    stage_range: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
    gamma: float = 1 / 3
    sigma_grid: int = 1000  # snap boundaries to the official 1000-point grid; 0 keeps them exact
    num_train_timesteps: int = 1000

    @classmethod
    def from_config(cls, flow) -> "PyramidSchedule":
        """Build from a `FlowConfig`."""
        return cls(tuple(flow.stage_range), flow.gamma, flow.sigma_grid, flow.num_train_timesteps)

    @classmethod
    def uniform(cls, num_train_timesteps: int = 1000) -> "PyramidSchedule":
        """One stage over the whole path: plain rectified flow."""
        return cls((0.0, 1.0), 1 / 3, 0, num_train_timesteps)

    @property
    def num_stages(self) -> int:
        return len(self.stage_range) - 1

    def _boundary_sigma(self, r: float) -> float:
        """Sigma at path fraction r (r = 0 is noise), snapped down to the grid like the official code."""
        if self.sigma_grid:
            return 1.0 - math.floor(r * self.sigma_grid + 1e-9) / self.sigma_grid
        return 1.0 - r

    @cached_property
    def original_starts(self) -> tuple[float, ...]:
        """s^o_k: where stage k would start without the jump correction."""
        return tuple(self._boundary_sigma(r) for r in self.stage_range[:-1])

    @cached_property
    def end_sigmas(self) -> tuple[float, ...]:
        """e_k: stage k ends at sigma e_k; the last stage ends at data (0)."""
        ends = [self._boundary_sigma(r) for r in self.stage_range[1:]]
        ends[-1] = 0.0
        return tuple(ends)

    def _jump(self, k: int) -> tuple[float, float]:
        """(s, alpha) for the transition into stage k: s = 1 - s^o_k, alpha = 1 / (sqrt(1 + 1/gamma)(1 - s) + s)."""
        s = 1.0 - self.original_starts[k]
        return s, 1.0 / (math.sqrt(1.0 + 1.0 / self.gamma) * (1.0 - s) + s)

    @cached_property
    def start_sigmas(self) -> tuple[float, ...]:
        """c_k: corrected start sigma of stage k (c_0 = 1); 1 - c_k = alpha_k s_k."""
        starts = [1.0]
        for k in range(1, self.num_stages):
            s, alpha = self._jump(k)
            starts.append(1.0 - alpha * s)
        return tuple(starts)

    def renoise_coefficients(self, k: int) -> tuple[float, float]:
        """Pyramid Flow's jump into stage k: z <- alpha Up(z) + beta n', beta = alpha (1 - s) / sqrt(gamma)."""
        if not 1 <= k < self.num_stages:
            raise IndexError(f"stage {k} has no incoming transition")
        s, alpha = self._jump(k)
        return alpha, alpha * (1.0 - s) / math.sqrt(self.gamma)

    @cached_property
    def model_time_windows(self) -> tuple[tuple[float, float], ...]:
        """(T_start, T_end) per stage: the stages tile [N, 0] in proportion to their sigma lengths c_k - e_k."""
        lengths = [c - e for c, e in zip(self.start_sigmas, self.end_sigmas)]
        total = sum(lengths)
        n = float(self.num_train_timesteps)
        cum = [0.0]
        for length in lengths:
            cum.append(cum[-1] + length / total)
        cum[-1] = 1.0
        return tuple((n * (1.0 - a), n * (1.0 - b)) for a, b in zip(cum, cum[1:]))

    @cached_property
    def integer_model_time_windows(self) -> tuple[tuple[int, int], ...]:
        """The released NAMI scheduler's windows ([1000, 744], [744, 386], [386, 1] for thirds): the same
        cumulative fractions f_k, truncated onto the integer timesteps N, N-1, ..., 1 as its code does
        (index int(f_k N), the last one capped at N - 1). See `grids.OfficialGrid`."""
        lengths = [c - e for c, e in zip(self.start_sigmas, self.end_sigmas)]
        total, n = sum(lengths), self.num_train_timesteps
        fractions = [sum(lengths[:k]) / total for k in range(self.num_stages)] + [1.0]
        index = [min(int(f * n), n - 1) for f in fractions]
        return tuple((n - a, n - b) for a, b in zip(index, index[1:]))

    def model_time(self, k: int, sigma_local: torch.Tensor | float) -> torch.Tensor | float:
        """Model time fed to the network in stage k: T_end + sigma' (T_start - T_end)."""
        t_start, t_end = self.model_time_windows[k]
        return t_end + sigma_local * (t_start - t_end)

    def sigma_local_at(self, k: int, model_time: torch.Tensor | float) -> torch.Tensor | float:
        """Inverse of `model_time`: sigma' in stage k at model time T."""
        t_start, t_end = self.model_time_windows[k]
        return (model_time - t_end) / (t_start - t_end)

    def global_sigma(self, k: int, sigma_local: torch.Tensor | float) -> torch.Tensor | float:
        """Sigma on the whole path at local sigma' of stage k: e_k + sigma' (c_k - e_k)."""
        return self.end_sigmas[k] + sigma_local * self.width(k)

    def width(self, k: int) -> float:
        """c_k - e_k: how much global sigma stage k covers (dz/dsigma' = width x (n - x) on the path)."""
        return self.start_sigmas[k] - self.end_sigmas[k]

    def summary(self) -> dict:
        """Plain numbers for `nami info` and logs."""
        return {
            "start_sigmas": list(self.start_sigmas),
            "end_sigmas": list(self.end_sigmas),
            "original_start_sigmas": list(self.original_starts),
            "model_time_windows": [list(w) for w in self.model_time_windows],
        }
