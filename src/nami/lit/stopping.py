"""A training run stopped by a stop signal (`nami.signals`: SIGTERM, SIGUSR1) at the end of an optimizer step,
with that step's checkpoint, and an exit status that says it did not finish.

Lightning 2.6's own SIGTERM handling (trainer/connectors/signal_connector.py, the training loops) is replaced
for the training loop: its handler sets a flag that the loop turns into SIGTERMException, a SystemExit without a
code (the process exits 0: a scheduler sees success), after whatever micro-batch is running (inside an
accumulated step), with no checkpoint; under DDP it also broadcasts from inside the signal handler, which can pair
with another collective of a rank that got no signal (Lightning issue #20806). Here instead:

- `StopOnSignal.on_train_start` installs nami's handler over Lightning's, and the loop runs in a
  `deferring_stop` section: a signal is only recorded.
- At the end of every optimizer step (after that step's checkpoint, previews and evaluation, where due) all
  ranks agree whether any of them got one: one small all-reduce (none on one device), so every rank stops after
  the same step.
- That step's checkpoint is written by StepCheckpoints (its name, its atomic write, its retention; not twice
  when it was due anyway); the step's logs are written; before the next step starts the run raises
  `Interrupted`: exit 128 + the signal (143 for SIGTERM, 138 for SIGUSR1). `trainer.resume=auto` (or `last`)
  continues from it exactly as if nothing had happened. A signal after the last step's check stops the run
  before its model directory is written (the final checkpoint and weights.safetensors are there; a
  `trainer.resume=auto` run writes it without training again).
- On SLURM, SIGUSR1 (`#SBATCH --signal=USR1@120`, the warning before the time limit) also requeues the job
  (`scontrol requeue`), as Lightning's auto-requeue does; Lightning's own SIGUSR1 handler, which saves
  `hpc_ckpt_N.ckpt` from inside the handler (mid-step) and resumes from it on its own, is turned off
  (`cluster_plugins`: `SLURMEnvironment(auto_requeue=False)`). SIGTERM never requeues: `scancel` sends it, and
  a SLURM that preempts with requeueing requeues the job itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from contextlib import ExitStack

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from .. import signals
from ..errors import Interrupted
from .callbacks import StepCheckpoints

REQUEUE_SIGNAL = signal.SIGUSR1  # SLURMEnvironment's default requeue_signal


def cluster_plugins() -> list:
    """Trainer plugins: on SLURM, its environment with Lightning's auto-requeue off (module docstring)."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeue_slurm_job() -> str:
    """`scontrol requeue` this SLURM job (an array task as JOBID_TASKID, as Lightning names it); what happened."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if array else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job):
        return f"not requeued (no usable SLURM job id: {job!r})"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"requeueing SLURM job {job} failed ({err})"
    if result.returncode:
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return f"requeueing SLURM job {job} failed ({reason})"
    return f"SLURM job {job} requeued"


class StopOnSignal(L.Callback):
    """Stop after the optimizer step during which a stop signal came, with its checkpoint (module docstring).
    Goes after every callback that works at the end of a step (so a signal during an evaluation stops the run at
    that step) and before KeysRecorder (which records the next batch's keys as it starts)."""

    NOTE = "stopping after the current optimizer step, once its checkpoint is written"

    def __init__(self, checkpoints: StepCheckpoints):
        self.checkpoints = checkpoints
        self.stopping: tuple[int, str] | None = None  # (signal, what the stop line says)
        self._section = ExitStack()

    def on_train_start(self, trainer, pl_module) -> None:
        if not signals.active():  # trained outside handling_stop_signals() (another thread): Lightning's handling
            return
        signals.claim_handlers()
        self._section.enter_context(signals.deferring_stop(self.NOTE))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # inside an optimizer step
            return
        signum = self._agreed(trainer)
        if signum is not None:
            self.stopping = (signum, self._stop(trainer, pl_module, signum))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.stopping is not None:  # the previous step was saved and logged: stop before this one
            self._raise(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.stopping is None:
            signum = self._agreed(trainer)  # one that came during the end-of-run callbacks
            if signum is not None:
                self.stopping = (signum, self._stop(trainer, pl_module, signum))
        self._section.close()
        if self.stopping is not None:
            self._raise(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._section.close()

    def _agreed(self, trainer) -> int | None:
        """The stop signal any rank received (SIGTERM when ranks got different ones); every rank must call it."""
        if not signals.active():
            return None
        mine = signals.stop_signal()
        if trainer.world_size == 1:
            return mine
        flags = torch.tensor([float(mine == s) for s in signals.STOP_SIGNALS], device=trainer.strategy.root_device)
        counts = trainer.strategy.reduce(flags, reduce_op="sum").tolist()
        return next((s for s, n in zip(signals.STOP_SIGNALS, counts) if n > 0), None)

    def _stop(self, trainer, pl_module, signum: int) -> str:
        path = self.checkpoints.save_now(trainer, pl_module)
        said = f"step {trainer.global_step}, checkpoint {path} written"
        if signum == REQUEUE_SIGNAL and SLURMEnvironment.detect() and trainer.is_global_zero:
            said += f"; {requeue_slurm_job()}"
        return f"{said}; continue with trainer.resume=auto"

    def _raise(self, trainer) -> None:
        signum, said = self.stopping
        raise Interrupted(signum, said, quiet=not trainer.is_global_zero)
