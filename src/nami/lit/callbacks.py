"""Small single-purpose callbacks of the training run (in the spirit of mosaicml/diffusion's)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ThroughputMonitor, TQDMProgressBar
from safetensors.torch import save_file
from torchvision.utils import make_grid, save_image


def throughput_monitor(stage_tokens: list[int], log_every_n_steps: int) -> ThroughputMonitor:
    """Lightning's monitor: samples/s, image tokens/s ('items') and, on known GPUs, MFU (module.flops_per_batch).
    `stage_tokens[k]` is the image-token count of one stage-k sample (computed once per run)."""

    def tokens(batch) -> int:
        return sum(len(keys) * stage_tokens[k] for keys, k in zip(batch.keys, batch.stages))

    # rates are averaged over a window of batches; values appear once the window is full
    window = max(2, min(20, log_every_n_steps))
    return ThroughputMonitor(batch_size_fn=len, length_fn=tokens, window_size=window)


class StepProgressBar(TQDMProgressBar):
    """Training progress in optimizer steps out of trainer.max_steps, continuing from the resumed step (the
    stream never ends, so Lightning's epoch bar reads `Epoch 0/-2`, and after a resume `120/69`)."""

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        bar.set_description("train steps", refresh=False)
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step  # a resumed run starts where it stopped
        bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class SampleGrid(L.Callback):
    """Every `every` steps (and at the end): sample the fixed prompts with EMA weights; log and save a grid.

    Row i is prompt i; its columns are each stage's end point upsampled to full size, the last one being
    the final image. Runs on every rank (sharded models need all ranks for a forward); rank 0 writes.
    """

    def __init__(self, out_dir: Path, prompts: list[str], steps: list[int], guidance: float, seed: int = 0,
                 every: int = 0, dtype: torch.dtype | None = None):  # fmt: skip
        self.out_dir, self.prompts, self.steps, self.guidance = Path(out_dir), list(prompts), list(steps), guidance
        self.seed, self.every, self.dtype = seed, every, dtype

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0 and trainer.global_step > 0:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.sample(trainer, pl_module)

    @torch.no_grad()
    def sample(self, trainer, pl_module) -> None:
        was_training = pl_module.training
        pl_module.eval()
        result = pl_module.pipeline(use_ema=True).sample(self.prompts, self.steps, self.guidance, seed=self.seed,
                                                         keep_stages=True, dtype=self.dtype)  # fmt: skip
        pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        columns = torch.stack(result.stage_ends, dim=1)  # (prompts, stages, C, H, W)
        grid = make_grid(columns.flatten(0, 1).float().cpu(), nrow=columns.shape[1], normalize=True,
                         value_range=(-1, 1))  # fmt: skip
        zoom = max(1, 256 // columns.shape[-1])  # small images enlarged, pixels kept crisp
        grid = F.interpolate(grid[None], scale_factor=zoom, mode="nearest")[0]
        step = trainer.global_step
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples/stages", grid, step)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.out_dir / f"step{step:08d}.png")


class SkipCounts(L.Callback):
    """Log the data module's skipped-sample counts by reason (cumulative, summed over ranks) at log steps."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % trainer.log_every_n_steps:
            return
        counts = getattr(trainer.datamodule, "skip_counts", lambda: {})()
        for reason, count in counts.items():
            # every rank reports every reason (zeros included), so the all-reduce cannot hang
            pl_module.log(f"data/skipped_{reason}", float(count), reduce_fx="sum", sync_dist=True)


class KeysRecorder(L.Callback):
    """Append each step's sample keys to keys-rank<r>.jsonl (which data every step saw; resume audits)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"step": trainer.global_step, "keys": batch.all_keys()})
        with open(self.out_dir / f"keys-rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(line + "\n")


class ExportWeights(L.Callback):
    """At the end of training: EMA weights to weights.safetensors (gathered from shards), on rank 0."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        tensors = {}
        for name, p in pl_module.ema.state_dict().items():  # every rank joins the gathers
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            tensors[name] = full.detach().float().cpu().contiguous()
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(self.path), metadata={"format": "nami-weights", "step": str(trainer.global_step)})
