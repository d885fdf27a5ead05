"""The BridgeFlow interface and the registry that configs name kinds from.

A kind is built from its config block (`bridge.kind` and `bridge.params`) by `build_bridge`, the one builder:
`bridge_from_config` and the reference bridges of bridge pretraining go through it. A kind with parameters of
its own declares them as a `Params` dataclass (see `nami.registry`); the instance holds them parsed as `params`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..flow import Generators, PyramidSchedule, bridge_jump, previous_end
from ..registry import BRIDGES, NoParams


def register(kind: str) -> Callable[[type["BridgeFlow"]], type["BridgeFlow"]]:
    """Class decorator: make a BridgeFlow kind buildable by name from a config (`bridge.kind`)."""
    return BRIDGES.register(kind)


class BridgeFlow(nn.Module):
    """All K-1 transitions of one kind: forward(u, k) maps u = Up(end of stage k-1) to the start of stage k.

    Transition k (1 <= k < K) works at stage k's latent side `stage_sizes[k]` (or (height, width)) with `channels`
    channels; kinds that hold a map (scalar_bias) keep it at that size and resize it for others (aspect-ratio
    buckets), the other kinds take any size.
    """

    kind = "base"  # set by `register`
    Params: type = NoParams  # the kind's own parameters (bridge.params)
    adds_noise = False  # True for kinds that draw their own fresh noise (renoise)
    learnable = True  # has parameters to fit (identity and renoise do not)
    closed_form = False  # has a one-pass least-squares fit (see moments.py)

    def __init__(self, schedule: PyramidSchedule, channels: int, stage_sizes: list, params: Any = None):
        super().__init__()
        if len(stage_sizes) != schedule.num_stages:
            raise ValueError(f"need {schedule.num_stages} stage sizes, got {stage_sizes}")
        self.schedule = schedule
        self.channels = channels
        self.stage_sizes = list(stage_sizes)
        self.params = self.Params() if params is None else params

    @property
    def num_transitions(self) -> int:
        return self.schedule.num_stages - 1

    def forward(self, u: torch.Tensor, k: int, generator: Generators = None) -> torch.Tensor:
        if not 1 <= k <= self.num_transitions:
            raise IndexError(f"transition {k} outside 1..{self.num_transitions}")
        return self.transition(u, k, generator)

    def transition(self, u: torch.Tensor, k: int, generator: Generators) -> torch.Tensor:
        raise NotImplementedError

    def training_start(self, x_k: torch.Tensor, n_k: torch.Tensor, k: int, detail: bool = False) -> torch.Tensor:
        """start_k in training from stage k's data x^(k) and noise n^(k): the jump from end_(k-1), i.e.
        Bridge_k(Up(end_(k-1))) plus, with `detail`, the detail of n^(k) at level e_(k-1) (`flow.bridge_jump`)."""
        return bridge_jump(previous_end(x_k, n_k, k, self.schedule), k, self.schedule, self, detail, noise=n_k)

    def with_kind(self, kind: str, params: Mapping[str, Any] | None = None) -> "BridgeFlow":
        """A fresh bridge of another kind over the same transitions (schedule, channels, stage sizes)."""
        return build_bridge(kind, self.schedule, self.channels, self.stage_sizes, params)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, transitions={self.num_transitions}, channels={self.channels}, params={self.params}"


def build_bridge(
    kind: str,
    schedule: PyramidSchedule,
    channels: int,
    stage_sizes: list[int],
    params: Mapping[str, Any] | None = None,
) -> BridgeFlow:
    """A registered kind with its parameters parsed from `params` (its `bridge.params` block; None: defaults)."""
    return BRIDGES.create(kind, schedule, channels, stage_sizes, params=params)
