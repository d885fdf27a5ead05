"""From a data-module batch to model-space tensors: latents per stage group, caption dropout, step seeds."""

from __future__ import annotations

import torch

from ..flow import data_pyramid
from ..models import Autoencoder


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator fixed by (seed, rank, step): training noise needs no saved RNG state to resume exactly."""
    mixed = (seed * 0x9E3779B1 + rank * 0x85EBCA77 + step * 0xC2B2AE3D) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


def group_latents(images: torch.Tensor, stage: int, num_stages: int, pooled: bool, autoencoder: Autoencoder):
    """Model-space data x^(stage) of one stage group.

    `pooled` groups were already brought to the stage's side in the data workers (pixel space); otherwise the
    images are full resolution and the pyramid is built on the latents (VAE(Down(img)) != Down(VAE(img))).
    """
    latents = autoencoder.encode(images)
    return latents if pooled else data_pyramid(latents, num_stages)[stage]


def drop_captions(captions: list[str], probability: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by the empty prompt with `probability` (classifier-free guidance training)."""
    if probability <= 0:
        return list(captions)
    keep = torch.rand(len(captions), generator=generator) >= probability
    return [c if k else "" for c, k in zip(captions, keep.tolist())]
