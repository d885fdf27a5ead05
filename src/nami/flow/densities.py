"""In-window timestep densities: how training draws the stage-local coordinate sigma' in (0, 1).

Each density is a class registered under its `flow.timestep_density` name, with its parameters (a `Params`
dataclass, see `nami.registry`) read from `flow.density_params`; an instance is called as
density(batch, generator, device) -> (batch,) sigma'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..registry import TIMESTEP_DENSITIES, Component


class TimestepDensity(Component):
    """sigma' in (0, 1) for each of `batch` training samples, drawn from `generator`."""

    def __call__(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class LogitNormalParams:
    mean: float = 0.0  # location of the normal before the sigmoid (> 0 favours the noisy end of the window)
    std: float = 1.0

    def validate(self) -> None:
        if not math.isfinite(self.mean):
            raise ConfigError("mean", f"must be a finite number, got {self.mean}")
        if not (math.isfinite(self.std) and self.std > 0):
            raise ConfigError("std", f"must be > 0, got {self.std}")


@TIMESTEP_DENSITIES.register("logit_normal")
class LogitNormal(TimestepDensity):
    """sigmoid(N(mean, std)): SD3's default, denser in the middle of the window."""

    Params = LogitNormalParams

    def __call__(self, batch, generator=None, device=None):
        mean, std = self.params.mean, self.params.std
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))


@TIMESTEP_DENSITIES.register("uniform")
class Uniform(TimestepDensity):
    """U(0, 1): every point of the window alike."""

    def __call__(self, batch, generator=None, device=None):
        return torch.rand(batch, generator=generator, device=device)
