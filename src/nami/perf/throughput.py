"""Achieved TFLOP/s and the fraction of the card's peak, so every speed figure is a ratio to the limit.

FLOPs are the analytic model of `nami.models.cost` (2 per multiply-add in every matrix product), the same
count Lightning's ThroughputMonitor turns into MFU during training. Peaks are dense bf16 tensor-core figures
from the vendors' data sheets (no 2:4 sparsity); a device not in the table reports TFLOP/s only.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch import nn

from ..config import NamiConfig
from ..config.buckets import stage_latent_shapes
from ..models import forward_cost

# dense bf16 TFLOP/s by a substring of torch.cuda.get_device_name(), most specific first
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, or None for a device the table does not know (CPUs included)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def rate(flops: float, seconds: float, device_name: str) -> dict:
    """{"tflops": achieved TFLOP/s, "peak_fraction": of the bf16 peak (None when unknown)}."""
    tflops = flops / seconds / 1e12 if seconds > 0 else 0.0
    peak = peak_tflops(device_name)
    return {"tflops": tflops, "peak_fraction": tflops / peak if peak else None}


def format_rate(r: dict) -> str:
    """'12.3 TFLOP/s (45.6% of peak)' or '12.3 TFLOP/s'."""
    text = f"{r['tflops']:.3g} TFLOP/s"
    return text if r["peak_fraction"] is None else f"{text} ({100 * r['peak_fraction']:.1f}% of peak)"


class StageTimer:
    """Times every forward of `model` by stage and counts its FLOPs, through forward hooks (so the sampler
    itself is untouched). The stage is read from the input's size (nested or not) for images of `size` = (height,
    width) pixels (default the square resolution); on a GPU each forward is bracketed by synchronizations, which
    a benchmark pays in every variant alike.

    Use as a context manager around the sampling calls to measure; `report(device_name)` gives per stage the
    seconds, the model's FLOPs and the rate."""

    def __init__(self, cfg: NamiConfig, model: nn.Module, nested: bool = True, size: tuple[int, int] | None = None):
        self.cfg, self.model, self.nested = cfg, model, nested
        self.size = size or (cfg.resolution, cfg.resolution)
        shapes = stage_latent_shapes(cfg, *self.size)
        self._stage_of_shape = {shape: k for k, shape in enumerate(shapes)}
        self.seconds: dict[int, float] = defaultdict(float)
        self.flops: dict[int, float] = defaultdict(float)
        self.calls: dict[int, int] = defaultdict(int)
        self._handles: list = []
        self._start = 0.0

    def __enter__(self) -> "StageTimer":
        self._handles = [self.model.register_forward_pre_hook(self._before),
                         self.model.register_forward_hook(self._after)]  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _sync(self, x: torch.Tensor) -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    def _before(self, module, args) -> None:
        self._sync(args[0])
        self._start = time.perf_counter()

    def _after(self, module, args, output) -> None:
        self._sync(output)
        x = args[0]
        k = self._stage_of_shape.get(tuple(x.shape[-2:]), len(self._stage_of_shape) - 1)
        self.seconds[k] += time.perf_counter() - self._start
        self.flops[k] += x.shape[0] * forward_cost(self.cfg, k, nested=self.nested, size=self.size).total
        self.calls[k] += 1

    def report(self, device_name: str) -> list[dict]:
        """Per stage in order: stage, calls, seconds, TFLOP (model FLOPs), TFLOP/s, fraction of peak."""
        return [{"stage": k, "calls": self.calls[k], "seconds": self.seconds[k], "tflop": self.flops[k] / 1e12,
                 **rate(self.flops[k], self.seconds[k], device_name)}
                for k in sorted(self.seconds)]  # fmt: skip
