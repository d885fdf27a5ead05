"""Linear BridgeFlow kinds and their closed-form least-squares fits from streamed moments.

Each closed-form kind keeps float64 sums keyed "<k>.<name>" (one set per transition k). Sums add across
batches and ranks, so a fit is: accumulate over the data once, all-reduce, `solve` (see fit.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    """a_k u + B_k: one scalar and one bias map per transition (the released official form).

    B_k is held at the transition's reference size (stage k's latent at `resolution`, the square). At another
    size (an aspect-ratio bucket) the map is resized to it, bilinearly (antialiased when it shrinks): the bias
    is read as a function of the normalised image position, so one map serves every bucket and the released
    square bridge samples any size. The closed-form fit takes batches of any sizes: the scale comes from the
    within-position moments of every size, each size's mean residual y - a u is resized to the reference grid,
    and B_k is their mean weighted by samples.

    Why this rule (scripts/bridge_bucket_rules.py, held-out MSE on GenEval-Shapes at the five auto buckets of the
    tiny config at 64 px, 384 fit / 192 held-out scenes per bucket; README "Aspect-ratio buckets"): the fitted rules are
    within 2.5% of each other (Up alone is 16-32% worse). Resizing a square-only fit (the released bridge) costs
    3-4% at 1:4 on transition 2; fitting the one map on every bucket removes it (0.0979 overall against 0.0990)
    and comes within 0.7% of one map per bucket (0.0972), which would need a map per bucket in the file and a
    refit for every table. The position-free conv1x1 is as good or better on this data (0.0967).
    """

    closed_form = True

    def __init__(self, schedule, channels, stage_sizes, params=None):
        super().__init__(schedule, channels, stage_sizes, params)
        t = self.num_transitions
        self.scale = nn.Parameter(torch.ones(t))
        self.bias = nn.ParameterList(
            nn.Parameter(torch.zeros(channels, *grid_shape(stage_sizes[k]))) for k in range(1, t + 1)
        )

    def transition(self, u, k, generator):
        bias = resize_map(self.bias[k - 1], u.shape[-2:])
        return self.scale[k - 1].to(u.dtype) * u + bias.to(u.dtype)

    def new_moments(self) -> Moments:
        out = {}
        for k in range(1, self.num_transitions + 1):
            out.update(self._size_moments(k, grid_shape(self.stage_sizes[k])))
            out[f"{k}.uu"] = torch.zeros((), dtype=torch.float64)  # global second moments
            out[f"{k}.uy"] = torch.zeros((), dtype=torch.float64)
        return out

    def _size_moments(self, k: int, shape: tuple[int, int]) -> Moments:
        """The per-position sums of one size: "<k>.<h>x<w>.n" (samples), ".su", ".sy"."""
        prefix = f"{k}.{shape[0]}x{shape[1]}"
        return {f"{prefix}.n": torch.zeros((), dtype=torch.float64),
                f"{prefix}.su": torch.zeros(self.channels, *shape, dtype=torch.float64),
                f"{prefix}.sy": torch.zeros(self.channels, *shape, dtype=torch.float64)}  # fmt: skip

    def accumulate(self, moments: Moments, u: torch.Tensor, y: torch.Tensor, k: int) -> None:
        u, y = u.double(), y.double()
        shape = tuple(u.shape[-2:])
        prefix = f"{k}.{shape[0]}x{shape[1]}"
        if f"{prefix}.n" not in moments:  # a size first seen here (all_reduce_moments joins the ranks' sizes)
            moments.update(self._size_moments(k, shape))
        moments[f"{prefix}.n"] += u.shape[0]
        moments[f"{prefix}.su"] += u.sum(0).cpu()
        moments[f"{prefix}.sy"] += y.sum(0).cpu()
        moments[f"{k}.uu"] += (u * u).sum().cpu()
        moments[f"{k}.uy"] += (u * y).sum().cpu()

    @torch.no_grad()
    def solve(self, moments: Moments, ridge: float = 0.0) -> None:
        # For fixed a the best bias of one size is its per-position mean of y - a u; substituting it, a is the
        # pooled within-position covariance of (u, y) over the within-position variance of u, over every size.
        for k in range(1, self.num_transitions + 1):
            sizes = [(moments[f"{p}.n"], moments[f"{p}.su"], moments[f"{p}.sy"]) for p in _size_prefixes(moments, k)]
            sizes = [group for group in sizes if group[0] > 0]
            if not sizes:  # no pair of this transition was seen: it stays as it was
                continue
            cov = moments[f"{k}.uy"] - sum((su * sy).sum() / n for n, su, sy in sizes)
            var = moments[f"{k}.uu"] - sum((su * su).sum() / n for n, su, sy in sizes)
            a = cov / (var * (1.0 + ridge))
            self.scale[k - 1].copy_(a)
            reference = self.bias[k - 1].shape[-2:]
            means = [(n, resize_map((sy - a * su) / n, reference)) for n, su, sy in sizes]
            bias = means[0][1] if len(means) == 1 else sum(n * m for n, m in means) / sum(n for n, _ in means)
            self.bias[k - 1].copy_(bias)


def grid_shape(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """A stage size as (height, width): a side stands for a square."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_map(bias: torch.Tensor, shape) -> torch.Tensor:
    """A (C, h, w) map at another (height, width): bilinear, antialiased when shrinking; itself when the size is
    its own (so the square path is untouched)."""
    shape = tuple(shape)
    if tuple(bias.shape[-2:]) == shape:
        return bias
    return F.interpolate(bias[None], size=shape, mode="bilinear", align_corners=False, antialias=True)[0]


def _size_prefixes(moments: Moments, k: int) -> list[str]:
    """"<k>.<h>x<w>" of every size with moments for transition k, in a fixed order."""
    return sorted(key[: -len(".n")] for key in moments if key.startswith(f"{k}.") and key.endswith(".n"))


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C) in float64."""
    return x.double().permute(0, 2, 3, 1).reshape(-1, x.shape[1])
