"""Run one measurement in a forked child under a wall-clock budget, so its failure is a recorded outcome.

A CUDA out-of-memory error leaves the allocator fragmented, an illegal memory access poisons the CUDA context for
the rest of the process, a hung kernel never returns, and a second FSDP run in one process meets the first one's
process group. A child per measurement contains all of these: the parent records what happened (`Outcome`) and
starts the next one on a fresh process, whose CUDA context, allocator and peak-memory counters are its own.

The parent must not have initialised CUDA before forking (a forked child cannot use a CUDA context inherited from
its parent): decide whether there is a GPU with PYTORCH_NVML_BASED_CUDA_CHECK=1, which asks NVML instead of CUDA.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

STATUSES = ("ok", "error", "out_of_memory", "timeout", "crashed")
# what the allocators say when memory runs out: torch.OutOfMemoryError (CUDA), the CPU allocator's RuntimeError
OOM_MARKERS = ("out of memory", "can't allocate memory")


@dataclass
class Outcome:
    """What one isolated run gave: `status` one of STATUSES, the function's result (a dict) when ok, else `error`
    (one line) and the traceback's last lines; `peak_memory_bytes`: the child's torch.cuda.max_memory_allocated at
    a failure where CUDA was in use (the figure an OOM report needs)."""

    status: str
    wall_s: float
    result: dict | None = None
    error: str | None = None
    traceback: list[str] = field(default_factory=list)
    peak_memory_bytes: int | None = None


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(marker in text for marker in OOM_MARKERS)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _child(fn: Callable[[], dict], writer) -> None:
    try:
        message = {"status": "ok", "result": fn()}
    except BaseException as err:  # everything, KeyboardInterrupt and SystemExit included, is the parent's to record
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None
        message = {"status": "out_of_memory" if is_out_of_memory(err) else "error", "error": _one_line(err),
                   "traceback": traceback.format_exc().strip().splitlines()[-12:],
                   "peak_memory_bytes": peak}  # fmt: skip
    writer.send(message)
    writer.close()


def run_isolated(fn: Callable[[], dict], budget_s: float) -> Outcome:
    """`fn()` in a forked child, killed after `budget_s` seconds of wall time."""
    if torch.cuda.is_initialized():
        raise RuntimeError("run_isolated forks: the parent must not initialise CUDA first")
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(fn, writer), daemon=True)
    start = time.perf_counter()
    child.start()
    writer.close()  # the child holds the only writing end: its death is an end of file here
    message = None
    answered = reader.poll(max(budget_s, 0.0))  # a result, or the end of file of a child that died
    if answered:
        try:
            message = reader.recv()
        except EOFError:  # the child died without a word (a signal, the kernel's OOM killer, a hard crash)
            pass
    wall = time.perf_counter() - start
    if not answered:
        child.kill()  # past its budget: our own child, by its handle
        child.join()
        reader.close()
        return Outcome("timeout", wall, error=f"did not finish within its budget of {budget_s:.0f} s")
    child.join(timeout=30)  # it has sent its result; a child stuck in its own exit is ended
    if child.is_alive():
        child.kill()
        child.join()
    reader.close()
    if message is None:
        code = child.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return Outcome("crashed", wall, error=f"the child process ended without a result ({how})")
    return Outcome(message["status"], wall, message.get("result"), message.get("error"),
                   message.get("traceback", []), message.get("peak_memory_bytes"))  # fmt: skip
