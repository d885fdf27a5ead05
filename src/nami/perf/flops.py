"""Measured FLOPs via torch.utils.flop_counter, taught the CPU attention kernel it does not know yet."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _register_cpu_sdpa() -> None:
    # On CPU, F.scaled_dot_product_attention dispatches to this op, which FlopCounterMode (torch 2.14) does
    # not count; it computes the same QK^T and AV products as the GPU flash kernel.
    if _CPU_SDPA in flop_registry:
        return

    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs (2 per multiply-add) of the matrix products `fn()` runs."""
    _register_cpu_sdpa()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
