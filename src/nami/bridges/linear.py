"""Linear BridgeFlow kinds and their closed-form least-squares fits from streamed moments.

Each closed-form kind keeps float64 sums keyed "<k>.<name>" (one set per transition k). Sums add across
batches and ranks, so a fit is: accumulate over the data once, all-reduce, `solve` (see fit.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import BridgeFlow, register

Moments = dict[str, torch.Tensor]


@register("identity")
class IdentityBridge(BridgeFlow):
    """Up only: start_k = Up(end_(k-1)) (the ablation with no learned map)."""

    learnable = False

    def transition(self, u, k, generator):
        return u


@register("conv1x1")
class Conv1x1Bridge(BridgeFlow):
    """W_k u + b_k with W_k a C x C matrix per transition (the paper's single linear layer; any size)."""

    closed_form = True

    def __init__(self, schedule, channels, stage_sizes, params=None):
        super().__init__(schedule, channels, stage_sizes, params)
        t = self.num_transitions
        self.weight = nn.Parameter(torch.eye(channels).repeat(t, 1, 1))  # starts as the identity bridge
        self.bias = nn.Parameter(torch.zeros(t, channels))

    def transition(self, u, k, generator):
        w, b = self.weight[k - 1].to(u.dtype), self.bias[k - 1].to(u.dtype)
        return torch.einsum("oc,bchw->bohw", w, u) + b.view(1, -1, 1, 1)

    def new_moments(self) -> Moments:
        c = self.channels
        out = {}
        for k in range(1, self.num_transitions + 1):
            out[f"{k}.aa"] = torch.zeros(c + 1, c + 1, dtype=torch.float64)  # [u;1][u;1]^T
            out[f"{k}.ay"] = torch.zeros(c + 1, c, dtype=torch.float64)  # [u;1] y^T
        return out

    def accumulate(self, moments: Moments, u: torch.Tensor, y: torch.Tensor, k: int) -> None:
        a = _pixels(u)
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        moments[f"{k}.aa"] += (a.T @ a).cpu()
        moments[f"{k}.ay"] += (a.T @ _pixels(y)).cpu()

    @torch.no_grad()
    def solve(self, moments: Moments, ridge: float = 0.0) -> None:
        c = self.channels
        for k in range(1, self.num_transitions + 1):
            aa = moments[f"{k}.aa"].clone()
            aa[:c, :c] += ridge * torch.eye(c, dtype=aa.dtype) * aa[c, c]  # ridge scaled by pixel count
            theta = torch.linalg.lstsq(aa, moments[f"{k}.ay"]).solution  # (C+1, C)
            self.weight[k - 1].copy_(theta[:c].T)
            self.bias[k - 1].copy_(theta[c])


@register("scalar_bias")
class ScalarBiasBridge(BridgeFlow):
    """a_k u + B_k: one scalar and one bias map at the output resolution per transition (official form)."""

    closed_form = True

    def __init__(self, schedule, channels, stage_sizes, params=None):
        super().__init__(schedule, channels, stage_sizes, params)
        t = self.num_transitions
        self.scale = nn.Parameter(torch.ones(t))
        self.bias = nn.ParameterList(
            nn.Parameter(torch.zeros(channels, stage_sizes[k], stage_sizes[k])) for k in range(1, t + 1)
        )

    def transition(self, u, k, generator):
        bias = self.bias[k - 1]
        if u.shape[-2:] != bias.shape[-2:]:
            raise ValueError(f"scalar_bias transition {k} has a fixed output size {tuple(bias.shape[-2:])}, "
                             f"got {tuple(u.shape[-2:])}")
        return self.scale[k - 1].to(u.dtype) * u + bias.to(u.dtype)

    def new_moments(self) -> Moments:
        out = {}
        for k in range(1, self.num_transitions + 1):
            shape = (self.channels, self.stage_sizes[k], self.stage_sizes[k])
            out[f"{k}.n"] = torch.zeros((), dtype=torch.float64)  # samples
            out[f"{k}.su"] = torch.zeros(shape, dtype=torch.float64)  # per-position sums
            out[f"{k}.sy"] = torch.zeros(shape, dtype=torch.float64)
            out[f"{k}.uu"] = torch.zeros((), dtype=torch.float64)  # global second moments
            out[f"{k}.uy"] = torch.zeros((), dtype=torch.float64)
        return out

    def accumulate(self, moments: Moments, u: torch.Tensor, y: torch.Tensor, k: int) -> None:
        u, y = u.double(), y.double()
        moments[f"{k}.n"] += u.shape[0]
        moments[f"{k}.su"] += u.sum(0).cpu()
        moments[f"{k}.sy"] += y.sum(0).cpu()
        moments[f"{k}.uu"] += (u * u).sum().cpu()
        moments[f"{k}.uy"] += (u * y).sum().cpu()

    @torch.no_grad()
    def solve(self, moments: Moments, ridge: float = 0.0) -> None:
        # For fixed a the best bias is the per-position mean of y - a u; substituting it, a is the pooled
        # within-position covariance of (u, y) over the within-position variance of u.
        for k in range(1, self.num_transitions + 1):
            n, su, sy = moments[f"{k}.n"], moments[f"{k}.su"], moments[f"{k}.sy"]
            cov = moments[f"{k}.uy"] - (su * sy).sum() / n
            var = moments[f"{k}.uu"] - (su * su).sum() / n
            a = cov / (var * (1.0 + ridge))
            self.scale[k - 1].copy_(a)
            self.bias[k - 1].copy_((sy - a * su) / n)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C) in float64."""
    return x.double().permute(0, 2, 3, 1).reshape(-1, x.shape[1])
