"""In-window timestep densities: how training draws the stage-local coordinate sigma' in (0, 1).

Each density is registered under its `flow.timestep_density` name and called as
density(batch, mean, std, generator, device) -> (batch,) sigma'.
"""

from __future__ import annotations

import torch

from ..registry import TIMESTEP_DENSITIES


@TIMESTEP_DENSITIES.register("logit_normal")
def logit_normal(batch: int, mean: float = 0.0, std: float = 1.0, generator=None, device=None) -> torch.Tensor:
    """sigmoid(N(mean, std)): SD3's default, denser in the middle of the window."""
    return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))


@TIMESTEP_DENSITIES.register("uniform")
def uniform(batch: int, mean: float = 0.0, std: float = 1.0, generator=None, device=None) -> torch.Tensor:
    """U(0, 1): every point of the window alike (mean and std unused)."""
    return torch.rand(batch, generator=generator, device=device)


def sample_sigma_local(
    batch: int,
    density: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """sigma' in (0, 1) inside a stage window from the named density."""
    try:
        draw = TIMESTEP_DENSITIES[density]
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    return draw(batch, mean, std, generator, device)
