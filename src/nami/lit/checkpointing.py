"""Step checkpoints: written every `trainer.checkpoint_every` steps and at the end, the newest
`trainer.keep_checkpoints` kept, and found again for `trainer.resume` (last | auto | a path).

Retention is decided from the folder itself, not from a callback's memory, so it holds across resumes, and
a checkpoint is only ever one of ours (stepNNNNNNNN.ckpt; a kill mid-save leaves a `.partial`, never a
damaged `.ckpt`, see strategies.py).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from ..config import ConfigError
from .checkpoint_files import check_resumable, step_checkpoints
from .strategies import PARTIAL

def find_checkpoint(resume: str | None, folder: Path) -> str | None:
    """trainer.resume: None (start fresh), 'last' (the newest step checkpoint; there must be one), 'auto'
    (the newest if there is one, else fresh: one requeueable job script for first launch and restarts) or a
    path. Whatever is chosen is checked to be a checkpoint before Lightning reads it."""
    if not resume:
        return None
    if resume in ("last", "auto"):
        steps = step_checkpoints(folder)
        if not steps:
            if resume == "auto":
                return None
            raise ConfigError("trainer.resume", f"no checkpoint to resume under {folder}")
        path = steps[-1][1]
    else:
        path = Path(resume)
        if not path.exists():
            raise ConfigError("trainer.resume", f"checkpoint not found: {resume}")
    check_resumable(path)
    return str(path)


class StepCheckpoints(L.Callback):
    """stepNNNNNNNN.ckpt every `every` steps and at the end of training; keeps the newest `keep`."""

    def __init__(self, folder: Path, every: int, keep: int):
        self.folder, self.every, self.keep = Path(folder), every, keep
        self._saved_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every == 0 and step != self._saved_step:  # not again after a skipped step
            self._save(trainer, step)

    def on_train_end(self, trainer, pl_module) -> None:
        path = self.folder / f"step{trainer.global_step:08d}.ckpt"
        if trainer.global_step != self._saved_step and not path.exists() and not Path(f"{path}{PARTIAL}").exists():
            self._save(trainer, trainer.global_step)

    def _save(self, trainer, step: int) -> None:
        trainer.save_checkpoint(self.folder / f"step{step:08d}.ckpt", weights_only=False)
        self._saved_step = step
        for _, old in step_checkpoints(self.folder)[: -self.keep]:
            trainer.strategy.remove_checkpoint(old)
