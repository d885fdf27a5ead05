"""The BridgeFlow interface and the registry that configs name kinds from."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..flow import Generators, PyramidSchedule
from ..registry import BRIDGES


def register(kind: str) -> Callable[[type["BridgeFlow"]], type["BridgeFlow"]]:
    """Class decorator: make a BridgeFlow kind buildable by name from a config (`bridge.kind`)."""

    def wrap(cls: type[BridgeFlow]) -> type[BridgeFlow]:
        cls.kind = kind
        return BRIDGES.register(kind)(cls)

    return wrap


class BridgeFlow(nn.Module):
    """All K-1 transitions of one kind: forward(u, k) maps u = Up(end of stage k-1) to the start of stage k.

    Transition k (1 <= k < K) works at stage k's latent side `stage_sizes[k]` with `channels` channels.
    """

    kind = "base"
    adds_noise = False  # True for kinds that draw their own fresh noise (renoise)
    learnable = True  # has parameters to fit (identity and renoise do not)
    closed_form = False  # has a one-pass least-squares fit (see moments.py)

    def __init__(self, schedule: PyramidSchedule, channels: int, stage_sizes: list[int], hidden: int = 64):
        super().__init__()
        if len(stage_sizes) != schedule.num_stages:
            raise ValueError(f"need {schedule.num_stages} stage sizes, got {stage_sizes}")
        self.schedule = schedule
        self.channels = channels
        self.stage_sizes = list(stage_sizes)
        self.hidden = hidden

    @property
    def num_transitions(self) -> int:
        return self.schedule.num_stages - 1

    def forward(self, u: torch.Tensor, k: int, generator: Generators = None) -> torch.Tensor:
        if not 1 <= k <= self.num_transitions:
            raise IndexError(f"transition {k} outside 1..{self.num_transitions}")
        return self.transition(u, k, generator)

    def transition(self, u: torch.Tensor, k: int, generator: Generators) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"kind={self.kind}, transitions={self.num_transitions}, channels={self.channels}"


def build_bridge(
    kind: str, schedule: PyramidSchedule, channels: int, stage_sizes: list[int], hidden: int = 64
) -> BridgeFlow:
    """Instantiate a registered kind."""
    return BRIDGES[kind](schedule, channels, stage_sizes, hidden)
