"""`trainer.precision: auto`: bf16 autocast only where the hardware multiplies bf16 natively.

Measured on an AVX2-only CPU of this project's machines (torch 2.14.1, 2 threads): a 2048x256 @ 256x1024
matmul runs at 35 GFLOP/s in float32 and 1.3 GFLOP/s in bfloat16, so bf16 autocast would slow training
~20x there; CPUs with AVX512-BF16 or AMX run bf16 faster than float32.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether /proc/cpuinfo lists a bf16 matrix instruction set."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def uses_cuda(accelerator: str = "auto") -> bool:
    """Whether `trainer.accelerator` selects a CUDA GPU here (auto: when there is one)."""
    return accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """A Lightning precision string for `trainer.precision` (resolving `auto`)."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if uses_cuda(accelerator) or cpu_has_native_bf16() else "32-true"


def autocast_dtype(precision: str, accelerator: str = "auto") -> torch.dtype | None:
    """The autocast dtype sampling should use for the same setting (None: full precision)."""
    resolved = resolve_precision(precision, accelerator)
    return torch.bfloat16 if resolved.startswith("bf16") else torch.float16 if resolved.startswith("16") else None


def flush_denormals() -> bool:
    """Treat denormal floats as zero on the CPU (a process-wide setting; GPUs are not affected).

    Small-stage activations and the EMA's tiny updates produce denormals, and x86 handles each in microcode,
    hundreds of cycles. Measured on this project's 2-core machines (`nami bench sampling experiments/tiny.yaml`,
    batch 32, one process): progressive/uniform time ratio 0.515 without flushing, 0.462 with it (the FLOP
    model says 0.465). Returns False where the CPU has no such mode (non-x86)."""
    return torch.set_flush_denormal(True)
