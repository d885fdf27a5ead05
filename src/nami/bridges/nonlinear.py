"""Non-linear BridgeFlow ablations (the paper found no gain over the linear map): per-pixel MLP and small CNN.

Both are residual, u + f(u), with f's last layer zero-initialised, so an unfitted bridge is the identity.
"""

from __future__ import annotations

from torch import nn

from .base import BridgeFlow, register


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
    kernel, depth = 1, 2

    def __init__(self, schedule, channels, stage_sizes, hidden=64):
        super().__init__(schedule, channels, stage_sizes, hidden)
        self.branches = nn.ModuleList(
            _residual_branch(channels, hidden, self.kernel, self.depth) for _ in range(self.num_transitions)
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
