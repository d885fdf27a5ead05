"""Fitting BridgeFlow: one-pass closed form for linear kinds, AdamW for any kind, and held-out errors.

`BridgePretrainModule` (lit/) and the notebooks fit through these; the module only decides which batches
fit and which score.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .base import BridgeFlow
from .linear import Moments

# (u, y, k): bridge input Up(end_(k-1)), its MSE target, and the transition index (PyramidFlow.bridge_pairs)
Pair = tuple[torch.Tensor, torch.Tensor, int]


def all_reduce_moments(moments: Moments) -> Moments:
    """Sum moments over ranks in place (one flat all-reduce); a no-op without a process group. A key some rank
    lacks (a size only other ranks saw: scalar_bias keeps sums per image size) is added to it as zeros first."""
    if not (dist.is_available() and dist.is_initialized()):
        return moments
    shapes: list[dict[str, tuple[int, ...]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, {key: tuple(value.shape) for key, value in moments.items()})
    for rank_shapes in shapes:
        for key, shape in rank_shapes.items():
            if key not in moments:
                moments[key] = torch.zeros(shape, dtype=torch.float64)
    keys = sorted(moments)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flat = torch.cat([moments[key].reshape(-1) for key in keys]).to(device)
    dist.all_reduce(flat)
    offset = 0
    for key in keys:
        n = moments[key].numel()
        moments[key].copy_(flat[offset : offset + n].view_as(moments[key]).cpu())
        offset += n
    return moments


class ClosedFormFit:
    """Streams pairs into the bridge's least-squares moments; `solve` sums them over ranks and solves once."""

    def __init__(self, bridge: BridgeFlow):
        if not bridge.closed_form:
            raise ValueError(f"bridge kind {bridge.kind!r} has no closed-form fit; use SGD")
        self.bridge = bridge
        self.moments = bridge.new_moments()

    @torch.no_grad()
    def add(self, pairs: Iterable[Pair]) -> None:
        for u, y, k in pairs:
            self.bridge.accumulate(self.moments, u, y, k)

    def solve(self, ridge: float = 0.0) -> Moments:
        all_reduce_moments(self.moments)
        self.bridge.solve(self.moments, ridge)
        return self.moments


def fit_closed_form(bridge: BridgeFlow, pairs: Iterable[Pair], ridge: float = 0.0) -> Moments:
    """Accumulate first and second moments over `pairs` (and ranks), then solve least squares once."""
    fit = ClosedFormFit(bridge)
    fit.add(pairs)
    return fit.solve(ridge)


def pairs_loss(bridge: BridgeFlow, pairs: list[Pair]) -> torch.Tensor:
    """Mean over `pairs` of each pair's MSE (the SGD objective: every transition weighs alike)."""
    return sum(F.mse_loss(bridge(u, k), y) for u, y, k in pairs) / len(pairs)


def fit_sgd(bridge: BridgeFlow, pairs: Iterator[Pair], steps: int, lr: float = 1e-3) -> list[float]:
    """AdamW on the MSE (the paper's pretraining); `pairs` must yield at least `steps` items. Returns losses."""
    optimizer = torch.optim.AdamW(bridge.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = pairs_loss(bridge, [next(pairs)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def squared_errors(
    bridge: BridgeFlow, pairs: Iterable[Pair], generator: torch.Generator | None = None
) -> dict[int, tuple[torch.Tensor, int]]:
    """Per transition k: (sum of squared errors as a float64 tensor, element count) over `pairs`;
    `generator` seeds the noise of kinds that draw it (renoise)."""
    out: dict[int, tuple[torch.Tensor, int]] = {}
    for u, y, k in pairs:
        sse = F.mse_loss(bridge(u, k, generator=generator).float(), y.float(), reduction="sum").double()
        prev, count = out.get(k, (0.0, 0))
        out[k] = (prev + sse, count + y.numel())
    return out


def bridge_mse(bridge: BridgeFlow, pairs: Iterable[Pair], generator: torch.Generator | None = None) -> dict[int, float]:
    """Mean squared error per transition over `pairs` (element-weighted)."""
    return {k: (sse / n).item() for k, (sse, n) in sorted(squared_errors(bridge, pairs, generator).items())}
