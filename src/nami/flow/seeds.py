"""Step seeds: the randomness of a training step is a function of (seed, rank, step, micro-batch)."""

from __future__ import annotations

import torch


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu",
                   micro: int = 0) -> torch.Generator:  # fmt: skip
    """A generator fixed by (seed, rank, step, micro): training noise needs no saved RNG state to resume exactly.
    `micro` is the micro-batch's index within an accumulated optimizer step (trainer.accumulate_grad_batches);
    micro-batch 0 draws what a step without accumulation draws."""
    mixed = (seed * 0x9E3779B1 + rank * 0x85EBCA77 + step * 0xC2B2AE3D + micro * 0x27D4EB2F) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)
