"""Resolution pyramids: the Down/Up operators, data and noise pyramids, and Pyramid Flow's block noise.

Every tensor is (B, C, H, W). Lists are ordered coarsest first, so index k is stage k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F


def down(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pool: the data operator between stages (bilinear 2x down, no rescale)."""
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def up(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsample."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def data_pyramid(x: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
    """x^(K-1) = x, x^(k-1) = down(x^(k)); returned coarsest first."""
    levels = [x]
    for _ in range(num_stages - 1):
        levels.append(down(levels[-1]))
    return levels[::-1]


def noise_down(n: torch.Tensor) -> torch.Tensor:
    """2 x 2x2 average pool: keeps white unit-variance noise white and unit-variance."""
    return 2.0 * down(n)


def noise_pyramid(n: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
    """Every level from one full-resolution draw: n^(k-1) = 2 pool(n^(k)); coarsest first."""
    levels = [n]
    for _ in range(num_stages - 1):
        levels.append(noise_down(levels[-1]))
    return levels[::-1]


Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def seeded_randn(
    shape: tuple[int, ...] | torch.Size, generator: Generators, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """White noise from one generator, or from one generator per batch row (so a sample depends on its own
    seed, not on its batch). Drawn where the generator lives (a CPU generator can seed CUDA sampling)."""
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([seeded_randn((1, *shape[1:]), g, device, dtype) for g in generator])
    draw_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype).to(device)


def block_noise(
    shape: tuple[int, ...] | torch.Size,
    gamma: float,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Noise whose every 2x2 block is a 4-vector with covariance (1 + gamma) I - gamma 11^T.

    With P the projection onto the block mean, the covariance is (1 + gamma)(I - P) + (1 - 3 gamma) P, so its
    square root applied to white noise e is sqrt(1 + gamma)(e - Pe) + sqrt(1 - 3 gamma) Pe.
    """
    if not 0.0 < gamma <= 1 / 3 + 1e-9:
        raise ValueError(f"gamma must lie in (0, 1/3], got {gamma}")
    eps = seeded_randn(shape, generator, device, dtype)
    mean = up(down(eps))
    return (1.0 + gamma) ** 0.5 * (eps - mean) + max(1.0 - 3.0 * gamma, 0.0) ** 0.5 * mean


def detail_band(x: torch.Tensor) -> torch.Tensor:
    """x - Up(Down(x)): the part of a full-resolution tensor that Up of its coarser level cannot carry."""
    return x - up(down(x))


def detail_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """e - Up(Down(e)) for white e: the part of full-resolution noise that Up of a coarse level cannot carry.

    Every 2x2 block sums to zero (per-block covariance I - 11^T / 4, i.e. 3/4 x block noise with gamma 1/3),
    and white noise splits as n = Up(Down(n)) + detail. A bridge fitted by MSE predicts the coarse part of its
    target's noise e_(k-1) n^(k) from Up(end_(k-1)) but never this part, which is independent of its input.
    """
    return detail_band(seeded_randn(shape, generator, device, dtype))

