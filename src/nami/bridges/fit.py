"""Fitting BridgeFlow: one-pass closed form for linear kinds, AdamW for any kind, and held-out MSE."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .base import BridgeFlow
from .linear import Moments

# (u, y, k): bridge input Up(end_(k-1)), its MSE target, and the transition index (flow.bridge_pair)
Pair = tuple[torch.Tensor, torch.Tensor, int]


def all_reduce_moments(moments: Moments) -> Moments:
    """Sum moments over ranks in place (one flat all-reduce); a no-op without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return moments
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


def fit_closed_form(bridge: BridgeFlow, pairs: Iterable[Pair], ridge: float = 0.0) -> Moments:
    """Accumulate first and second moments over `pairs` (and ranks), then solve least squares once."""
    if not bridge.closed_form:
        raise ValueError(f"bridge kind {bridge.kind!r} has no closed-form fit; use SGD")
    moments = bridge.new_moments()
    with torch.no_grad():
        for u, y, k in pairs:
            bridge.accumulate(moments, u, y, k)
    all_reduce_moments(moments)
    bridge.solve(moments, ridge)
    return moments


def fit_sgd(bridge: BridgeFlow, pairs: Iterator[Pair], steps: int, lr: float = 1e-3) -> list[float]:
    """AdamW on the MSE (the paper's pretraining); `pairs` must yield at least `steps` items. Returns losses."""
    optimizer = torch.optim.AdamW(bridge.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        u, y, k = next(pairs)
        loss = F.mse_loss(bridge(u, k), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def bridge_mse(bridge: BridgeFlow, pairs: Iterable[Pair], generator: torch.Generator | None = None) -> dict[int, float]:
    """Mean squared error per transition over `pairs` (element-weighted); `generator` seeds renoise's noise."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for u, y, k in pairs:
        out = bridge(u, k, generator=generator).float()
        sums[k] = sums.get(k, 0.0) + F.mse_loss(out, y.float(), reduction="sum").item()
        counts[k] = counts.get(k, 0) + y.numel()
    return {k: sums[k] / counts[k] for k in sorted(sums)}
