"""Step seeds: the randomness of a training step is a function of (seed, rank, step)."""

from __future__ import annotations

import torch


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator fixed by (seed, rank, step): training noise needs no saved RNG state to resume exactly."""
    mixed = (seed * 0x9E3779B1 + rank * 0x85EBCA77 + step * 0xC2B2AE3D) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)
