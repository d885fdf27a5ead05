"""Small single-purpose callbacks of the training run (in the spirit of mosaicml/diffusion's)."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from safetensors import SafetensorError
from safetensors.torch import save_file
from torchvision.utils import make_grid, save_image

from ..artifacts.files import write_atomically, write_failure
from ..artifacts.weights import BASE_FROM_INIT, checkpoint_name, step_checkpoints
from ..config import ConfigError, NamiConfig
from ..errors import RunStopped
from ..eval import to_rgb_uint8
from ..eval.sets import PromptSet, ShapesSet
from ..sampling.images import captioned_grid, stage_panels, zoom
from ..sampling.prompts import image_seed, read_prompts


def throughput_monitor(stage_tokens, log_every_n_steps: int) -> ThroughputMonitor:
    """Lightning's monitor: samples/s, image tokens/s ('items') and, on known GPUs, MFU (module.flops_per_batch).
    `stage_tokens(size)[k]` is the image-token count of one stage-k sample of the batch's bucket `size`."""

    def tokens(batch) -> int:
        per_stage = stage_tokens(batch.size)
        return sum(len(keys) * per_stage[k] for keys, k in zip(batch.keys, batch.stages))

    # rates are averaged over a window of batches; values appear once the window is full
    window = max(2, min(20, log_every_n_steps))
    return ThroughputMonitor(batch_size_fn=len, length_fn=tokens, window_size=window)


class StepProgressBar(TQDMProgressBar):
    """One bar: training progress in optimizer steps out of trainer.max_steps, continuing from the resumed step
    (the stream never ends, so Lightning's epoch bar reads `Epoch 0/-2`, after a resume `120/69`, and a
    `Training: 0/?` bar is drawn before it learns the total)."""

    def init_train_tqdm(self) -> Tqdm:
        trainer = self.trainer
        return Tqdm(desc="train steps", total=trainer.max_steps if trainer.max_steps > 0 else None,
                    initial=trainer.global_step, position=2 * self.process_position, disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0,
                    bar_format=self.BAR_FORMAT)  # fmt: skip

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        bar.initial = bar.n = trainer.global_step  # a resumed run starts where it stopped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._train_progress_bar is not None:  # drawn now, so the command's last line (why it stopped) stays last
            self._train_progress_bar.close()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: always "tb" here
        return metrics


class EveryNSteps(L.Callback):
    """Calls `run(trainer, pl_module)` every `every` optimizer steps (never at step 0, never twice for one step)
    and at the end of training when `at_end(trainer)` says so. `every` 0: only at the end. Only at the end of an
    optimizer step: inside an accumulated step global_step is still the last step's, and a run resumed from that
    step's checkpoint would save it again with a micro-batch consumed."""

    def __init__(self, every: int):
        self.every = every
        self.last_step = -1

    def run(self, trainer, pl_module) -> None:
        raise NotImplementedError

    def at_end(self, trainer) -> bool:
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # a micro-batch inside an optimizer step
            return
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0:
            self._fire(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_end(trainer):
            self._fire(trainer, pl_module)

    def _fire(self, trainer, pl_module) -> None:
        if trainer.global_step == self.last_step:
            return
        self.last_step = trainer.global_step
        self.run(trainer, pl_module)


@contextmanager
def sampling_mode(module: torch.nn.Module):
    """eval() while sampling, then every submodule back to its own mode (the frozen bridge stays in eval:
    a plain train() afterwards would switch it, and any dropout or batch norm in it, to training)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class StepCheckpoints(EveryNSteps):
    """stepNNNNNNNN.ckpt every `trainer.checkpoint_every` steps and at the end of training; the newest
    `trainer.keep_checkpoints` are kept. Retention is decided from the folder itself, not from a callback's
    memory, so it holds across resumes; a checkpoint is only ever one of ours (a kill mid-save leaves a partial
    file, never a damaged `.ckpt`: strategies.py)."""

    def __init__(self, folder: Path, every: int, keep: int):
        super().__init__(every)
        self.folder, self.keep = Path(folder), keep

    def at_end(self, trainer) -> bool:
        # a resumed run that trained no further step already has this step's checkpoint; a stale partial file of
        # a failed save is no checkpoint, and the save below replaces it
        return not (self.folder / checkpoint_name(trainer.global_step)).exists()

    def run(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.folder / checkpoint_name(trainer.global_step), weights_only=False)
        for _, old in step_checkpoints(self.folder)[: -self.keep]:
            trainer.strategy.remove_checkpoint(old)

    def save_now(self, trainer, pl_module) -> Path:
        """This step's checkpoint, out of turn (a stop signal: nami.lit.stopping), unless it is written already;
        at the end of an optimizer step only. Every rank must call it. Returns its path."""
        self._fire(trainer, pl_module)
        return self.folder / checkpoint_name(trainer.global_step)


class SampleGrid(EveryNSteps):
    """Every `every` steps (and at the end): sample the fixed prompts with EMA weights; log and save a grid.

    Row i is prompt i, its caption written beside it; its columns are each stage's end point upsampled to full
    size and, beside every end but the last (the final image), the clean image predicted at that stage's last
    model call. Runs on every rank (sharded models need all ranks for a forward); rank 0 writes.
    """

    def __init__(self, out_dir: Path, prompts: list[str], seed: int = 0, every: int = 0):
        super().__init__(every)
        self.out_dir, self.prompts, self.seed = Path(out_dir), list(prompts), seed

    @torch.no_grad()
    def run(self, trainer, pl_module) -> None:
        with sampling_mode(pl_module), pl_module.ema_applied():
            result = pl_module.pipeline(use_ema=True).sample(self.prompts, seed=self.seed, mode="progressive",
                                                             keep_stages=True)  # fmt: skip
        if not trainer.is_global_zero:
            return
        rows = [stage_panels(result, i, starts=False) for i in range(len(self.prompts))]
        panels = torch.stack([torch.stack([image for _, image in row]) for row in rows])
        grid = captioned_grid(panels, self.prompts, [title for title, _ in rows[0]])
        step = trainer.global_step
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples/stages", grid, step)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.out_dir / f"step{step:08d}.png")


def rank_share(n: int, world: int, rank: int) -> list[int]:
    """The prompt indices rank `rank` of `world` samples: consecutive blocks of ceil(n / world), the last
    ones padded with prompt n - 1, so every rank runs the same batches and the shares gathered in rank order
    start with prompts 0 .. n - 1 in order."""
    share = -(-n // world)
    return [min(rank * share + j, n - 1) for j in range(share)]


def training_eval_set(cfg: NamiConfig, per_category: int) -> ShapesSet | PromptSet:
    """`eval.kind`'s set (nami.eval.sets): GenEval-Shapes, or eval.prompts with the seeds `nami sample --prompts
    --seed eval.seed` gives each prompt's first image."""
    if cfg.eval.kind != "prompts":
        return ShapesSet(cfg, per_category)
    entries = read_prompts(cfg.eval.prompts, "eval.prompts")
    return PromptSet(cfg, [e.prompt for e in entries], [image_seed(cfg.eval.seed, e.index, 0) for e in entries])


class EvalCallback(EveryNSteps):
    """GenEval-Shapes of the EMA weights every `every` steps, and at the end of a run that got that far.
    With `eval.kind: prompts`, the prompt file `eval.prompts` instead: its images as a grid (eval/images) and,
    with their weights, eval/clip_score and eval/fid (nami.eval.sets).

    The prompts are the first `per_category` of each category of `nami eval`'s set, sampled with the same noise
    seeds, sampler settings and image size (eval.size), so a score here is `nami eval --num per_category` of
    those weights. Logged as
    eval/<category> and eval/overall (plus eval/fid and eval/clip_score when their weights are configured).
    With `best_dir`, best_dir/best.ckpt (weights only) holds the step with the best eval/overall so far and
    best.json its scores; that record carries across resumes, and a best.ckpt without one is never replaced.

    Every rank samples an equal share of the prompts (padded, so every rank runs the same batches, which a
    sharded model needs); the images are gathered, rank 0 scores them and broadcasts the scores, so every rank
    logs and keeps the same.
    """

    BEST, RECORD = "best.ckpt", "best.json"

    def __init__(self, cfg: NamiConfig, every: int, per_category: int, best_dir: Path | None = None):
        super().__init__(every)
        self.cfg = cfg
        self.eval_set = training_eval_set(cfg, per_category)
        self.identity = self.eval_set.identity
        self.best_dir = Path(best_dir) if best_dir is not None else None
        self.best = self._recorded_best() if self.best_dir is not None else None

    def _recorded_best(self) -> float | None:
        """eval/overall of the checkpoint kept so far under best_dir (None: none yet)."""
        record, ckpt = self.best_dir / self.RECORD, self.best_dir / self.BEST
        if not record.is_file():
            if ckpt.exists():
                raise ConfigError("eval.keep_best", f"{ckpt} exists without {self.RECORD}; it would be replaced: "
                                                    "move it away")  # fmt: skip
            return None
        try:
            kept = json.loads(record.read_text())
            overall, digest = float(kept["overall"]), kept["prompt_set"]["digest"]
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError("eval.keep_best", f"{record} is not a best-checkpoint record ({err})") from None
        if digest != self.identity["digest"]:
            raise ConfigError("eval.keep_best", f"{record} scored another prompt set (eval.seed or "
                                                "eval.train_per_category changed): move it away")  # fmt: skip
        return overall

    def at_end(self, trainer) -> bool:
        return trainer.global_step >= self.every

    def run(self, trainer, pl_module) -> None:
        self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        """Sample, score, log; keep the checkpoint if it is the best so far. Every rank must call it."""
        step = trainer.global_step
        start = time.perf_counter()
        with sampling_mode(pl_module), pl_module.ema_applied():
            images = self._sample(trainer, pl_module)
        scores = self._scores(trainer, images, pl_module.device)
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{name}": value for name, value in scores.items()}, step=step)
            if self.eval_set.kind == "prompts" and trainer.is_global_zero and hasattr(logger.experiment, "add_image"):
                grid = make_grid(zoom(images.float() / 255, 96), nrow=min(8, len(images)), padding=2, pad_value=1.0)
                logger.experiment.add_image("eval/images", grid, step)
        pl_module.print(f"eval at step {step}: {self.eval_set.summary(scores)} ({len(self.eval_set.prompts)} "
                        f"prompts, {time.perf_counter() - start:.1f}s)")  # fmt: skip
        if self.best_dir is not None and (self.best is None or scores["overall"] > self.best):
            self._keep(trainer, step, scores)
        return scores

    def _sample(self, trainer, pl_module) -> torch.Tensor:
        """(N, 3, H, W) uint8 images of every prompt, in prompt order, on every rank."""
        n, world = len(self.eval_set.prompts), trainer.world_size
        mine = rank_share(n, world, trainer.global_rank)
        captions, seeds = [self.eval_set.prompts[j] for j in mine], [self.eval_set.seeds[j] for j in mine]
        height, width = self.eval_set.size  # eval.size: a named bucket, else the square
        result = pl_module.pipeline(use_ema=True).sample(captions, seed=seeds, batch_size=self.cfg.eval.batch_size,
                                                         height=height, width=width)  # fmt: skip
        images = torch.stack([torch.from_numpy(to_rgb_uint8(image)).permute(2, 0, 1) for image in result.images])
        if world > 1:  # (world, share, ...) in rank order, which is prompt order
            images = trainer.strategy.all_gather(images.to(pl_module.device)).flatten(0, 1).cpu()
        return images[:n]

    def _scores(self, trainer, images: torch.Tensor, device=None) -> dict[str, float]:
        """Rank 0 scores; every rank gets its scores (or its error, so no rank waits for ever)."""
        scores: dict = {}
        if trainer.is_global_zero:
            try:
                scores = self.eval_set.score(images, device or "cpu")
            except Exception as err:  # noqa: BLE001 - the other ranks wait for these scores
                scores = {"error": f"{type(err).__name__}: {err}"}
        scores = trainer.strategy.broadcast(scores, src=0)
        if "error" in scores:
            raise RuntimeError(f"evaluation at step {trainer.global_step} failed: {scores['error']}")
        return scores

    def _keep(self, trainer, step: int, scores: dict[str, float]) -> None:
        """best.ckpt (atomically replaced, every rank joins), then its record (atomically too; a kill between
        the two leaves the new checkpoint under the old, lower record, which a later step may then beat)."""
        trainer.save_checkpoint(self.best_dir / self.BEST, weights_only=True)
        if trainer.is_global_zero:
            partial = self.best_dir / f"{self.RECORD}.partial"
            partial.write_text(json.dumps({"step": step, **scores, "prompt_set": self.identity}, indent=2) + "\n")
            os.replace(partial, self.best_dir / self.RECORD)
        self.best = scores["overall"]


class SkipCounts(EveryNSteps):
    """Log the data module's skipped-sample counts by reason (cumulative, summed over ranks) every `every` steps
    and at the end. A reason no rank has met stays out of TensorBoard (no rows of zeros)."""

    def run(self, trainer, pl_module) -> None:
        counts = getattr(trainer.datamodule, "skip_counts", lambda: {})()  # every reason, in one order, per rank
        if not counts:
            return
        totals = torch.tensor(list(counts.values()), dtype=torch.float64, device=pl_module.device)
        totals = trainer.strategy.reduce(totals, reduce_op="sum")  # every rank joins
        found = {f"data/skipped_{reason}": n for reason, n in zip(counts, totals.tolist()) if n}
        if found and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(found, step=trainer.global_step)


class KeysRecorder(L.Callback):
    """Append each batch's sample keys to keys-rank<r>.jsonl (which data every step saw; resume audits), with its
    step and its micro-batch index in the step (trainer.accumulate_grad_batches)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        micro = batch_idx % trainer.accumulate_grad_batches
        line = json.dumps({"step": trainer.global_step, "micro": micro, "keys": batch.all_keys()})
        with open(self.out_dir / f"keys-rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(line + "\n")


class ExportWeights(L.Callback):
    """At the end of training: complete weights to weights.safetensors, the EMA where the run trained and the
    base elsewhere (`JointFlowModule.ema_weights`), gathered from shards, float32, on rank 0. A LoRA run's holds
    its adapters alone (the base is trainer.init_from's; the metadata lists what it leaves out, as checkpoints do),
    so a LoRA run never writes a second copy of the base. A file that cannot be written is one line naming it and
    the cause, no partial file left."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        left_out = pl_module.checkpoint_omits() if getattr(pl_module, "adapter", None) is not None else set()
        tensors = {}
        for name, p in pl_module.ema_weights().items():  # every rank joins the gathers
            if name in left_out:
                continue
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            tensors[name] = full.detach().float().cpu().contiguous()
        metadata = {"format": "nami-weights", "step": str(trainer.global_step)}
        if left_out:
            metadata[BASE_FROM_INIT] = json.dumps(sorted(left_out))
        if trainer.is_global_zero:  # through a partial file: a kill or a full disk never leaves half of one
            try:
                write_atomically(self.path, lambda partial: save_file(tensors, str(partial), metadata=metadata))
            except (OSError, SafetensorError) as err:
                raise RunStopped(f"could not write {self.path} ({write_failure(err)}); the checkpoints are intact: "
                                 "free space and run again with trainer.resume=last") from None
