"""Precision, in one home: `trainer.precision` (auto: bf16 autocast only where the hardware multiplies bf16
natively) and `sampler.precision` (auto follows trainer.precision on the device that samples; *-mixed autocasts;
*-true casts weights and activations, as the released NAMI-2B runs in fp16).

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


def sampling_device(accelerator: str = "auto") -> torch.device:
    """Where sampling runs: a CUDA GPU when `trainer.accelerator` allows one and there is one, else the CPU. A
    config written for GPUs (accelerator gpu) samples on the CPU of a machine without one, with a note: sampling
    needs no GPU, only patience."""
    if uses_cuda(accelerator):
        return torch.device("cuda", torch.cuda.current_device())
    if accelerator in ("gpu", "cuda"):
        import sys

        print("nami: note: trainer.accelerator asks for a GPU and this machine has none: sampling on the CPU",
              file=sys.stderr)  # fmt: skip
    return torch.device("cpu")


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """A Lightning precision string for `trainer.precision` (resolving `auto`)."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if uses_cuda(accelerator) or cpu_has_native_bf16() else "32-true"


def autocast_dtype(precision: str, accelerator: str = "auto") -> torch.dtype | None:
    """The autocast dtype a `trainer.precision` setting runs the networks in (None: full precision)."""
    resolved = resolve_precision(precision, accelerator)
    return torch.bfloat16 if resolved.startswith("bf16") else torch.float16 if resolved.startswith("16") else None


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def sampling_dtypes(sampler_precision: str, trainer_precision: str,
                    device: torch.device) -> tuple[torch.dtype | None, torch.dtype | None]:  # fmt: skip
    """(autocast dtype, cast dtype) for sampling on `device`: `auto` autocasts as trainer.precision resolves there;
    fp32 neither; bf16-mixed / fp16-mixed autocast; bf16-true / fp16-true cast the weights and activations."""
    if sampler_precision == "auto":
        return autocast_dtype(trainer_precision, "gpu" if device.type == "cuda" else "cpu"), None
    kind, _, mode = sampler_precision.partition("-")
    dtype = PRECISION_DTYPES.get(kind)
    return (dtype, None) if mode == "mixed" else (None, dtype)


def flush_denormals() -> bool:
    """Treat denormal floats as zero on the CPU (a process-wide setting; GPUs are not affected).

    Small-stage activations and the EMA's tiny updates produce denormals, and x86 handles each in microcode,
    hundreds of cycles. Measured on this project's 2-core machines (`nami bench sampling experiments/tiny.yaml`,
    batch 32, one process): progressive/uniform time ratio 0.515 without flushing, 0.462 with it (the FLOP
    model says 0.465). Returns False where the CPU has no such mode (non-x86)."""
    return torch.set_flush_denormal(True)
