"""Non-linear BridgeFlow ablations (the paper found no gain over the linear map): per-pixel MLP and small CNN.

Both are residual, u + f(u), with f's last layer zero-initialised, so an unfitted bridge is the identity.
Their width is their own parameter, `bridge.params.hidden`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .base import BridgeFlow, register


@dataclass(frozen=True)
class ResidualParams:
    hidden: int = 64  # channels of the residual branch's hidden layers

    def validate(self) -> None:
        if self.hidden < 1:
            raise ConfigError("hidden", f"must be >= 1, got {self.hidden}")


def _residual_branch(channels: int, hidden: int, kernel: int, depth: int) -> nn.Sequential:
    layers, width = [], channels
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, hidden, kernel, padding=kernel // 2), nn.GELU()]
        width = hidden
    last = nn.Conv2d(width, channels, kernel, padding=kernel // 2)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class _ResidualBridge(BridgeFlow):
    Params = ResidualParams
    kernel, depth = 1, 2

    def __init__(self, schedule, channels, stage_sizes, params=None):
        super().__init__(schedule, channels, stage_sizes, params)
        self.branches = nn.ModuleList(
            _residual_branch(channels, self.params.hidden, self.kernel, self.depth)
            for _ in range(self.num_transitions)
        )

    def transition(self, u, k, generator):
        return u + self.branches[k - 1](u)


@register("mlp")
class MLPBridge(_ResidualBridge):
    """u + MLP(u) applied per pixel (1x1 convolutions, one hidden layer)."""

    kernel, depth = 1, 2


@register("cnn")
class CNNBridge(_ResidualBridge):
    """u + CNN(u): three 3x3 convolutions with GELU."""

    kernel, depth = 3, 3
