"""`ShardDataModule`: the LightningDataModule over streaming shards (training, evaluation, check, bench)."""

from __future__ import annotations

import warnings
from collections import Counter

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader

from nami.config import NamiConfig
from nami.flow import StageMix
from nami.text_embedding import TextEmbedding

from .collate import StageBatch
from .inputs import checked_shards
from .precomputed_dir import load_unconditional
from .records import REPAIR_REASONS, SKIP_REASONS, Shard
from .stream import ShardStream, StreamSpec, make_loader

STATE_VERSION = 1


class ShardDataModule(L.LightningDataModule):
    """Streams `cfg.data.shards` as `StageBatch`es, split across ranks and workers, resumable mid-epoch.

    `train_dataloader()` repeats epochs forever with random crops and (with `joint`) stage groups. It follows
    the batches the training loop actually consumes (`on_before_batch_transfer`, which Lightning calls after
    its one-batch prefetch), so `state_dict()` points at the first batch not yet trained on. `state_dict()`
    gathers every rank's position (a collective: Lightning calls it on all ranks when saving).

    `mix` is the stage mix joint training batches are split by: the trained flow's own (`parts.flow.mix`), so
    the data and the loss never disagree on the ratios. `shards`: already checked (`usable_shards`); None:
    resolved from `cfg.data` on first use.
    """

    def __init__(self, cfg: NamiConfig, joint: bool = True, mix: StageMix | None = None,
                 batches_per_step: int | None = None, shards: list[Shard] | None = None):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.joint = joint  # False: training batches are one full-resolution group (bridge fitting)
        self.mix = mix
        self.batches_per_step = batches_per_step  # None: the trainer's accumulate_grad_batches
        self._shards = shards
        self._loaded: dict | None = None  # state from a checkpoint, applied by the next train_dataloader()
        self._workers: dict[int, dict] = {}  # logical worker -> state after its last consumed batch
        self._next_worker = 0
        self._num_workers = cfg.data.num_workers

    # ---- inputs ---------------------------------------------------------------------------------------
    @property
    def shards(self) -> list[Shard]:
        """The resolved shard list (see `checked_shards`)."""
        if self._shards is None:
            self._shards = checked_shards(self.cfg)
        return self._shards

    def unconditional(self) -> TextEmbedding:
        """data.precomputed: the stored embedding of the empty prompt (caption dropout swaps it in), with a
        batch dimension of one."""
        return load_unconditional(self.cfg, self.shards)

    def setup(self, stage: str | None = None) -> None:
        self.shards  # noqa: B018 - resolve early: a bad path fails before any model work

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    # ---- loaders --------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """Endless joint-stage batches, from a loaded checkpoint's position or the last consumed batch."""
        rank, world = self._rank_world()
        self._num_workers = self.cfg.data.num_workers
        resume, first = self._resume_for(rank, world)
        self._workers, self._next_worker = dict(resume), first
        per_step = self.batches_per_step or (self.trainer.accumulate_grad_batches if self.trainer else 1)
        spec = StreamSpec.from_config(self.cfg, self.shards, rank, world, True, per_step, joint=self.joint,
                                      mix=self.mix)  # fmt: skip
        return make_loader(ShardStream(spec, resume=resume, first_worker=first), self._num_workers)

    def eval_dataloader(self, rank: int | None = None, world_size: int | None = None, **kw) -> DataLoader:
        """One epoch, centre crops, one full-resolution group per batch (check, bench, eval, bridge fits)."""
        if rank is None or world_size is None:
            rank, world_size = self._rank_world()
        spec = StreamSpec.from_config(self.cfg, self.shards, rank, world_size, False, **kw)
        return make_loader(ShardStream(spec), self.cfg.data.num_workers)

    # ---- position and counts --------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, StageBatch) and batch.state.get("stream") == "train":
            self.observe(batch)
        return batch

    def observe(self, batch: StageBatch) -> None:
        """Record that `batch` was consumed (its worker's position and counters)."""
        w = batch.state["worker"]
        self._workers[w] = batch.state
        self._next_worker = (w + 1) % max(batch.state["workers"], 1)

    def skip_counts(self) -> dict[str, int]:
        """Samples skipped so far on this rank by reason, every reason present (the same keys on every
        rank, so that logging them with sync_dist cannot pair mismatched collectives)."""
        return self._totals("skipped", SKIP_REASONS)

    def repair_counts(self) -> dict[str, int]:
        """Samples kept after a repair so far on this rank, by kind (every kind present)."""
        return self._totals("repaired", REPAIR_REASONS)

    def _totals(self, field: str, names: tuple[str, ...]) -> dict[str, int]:
        total = sum((Counter(s.get(field, {})) for s in self._workers.values()), Counter())
        return {name: total.get(name, 0) for name in names}

    def state_dict(self) -> dict:
        local = {"next_worker": self._next_worker, "workers": {str(w): s for w, s in self._workers.items()}}
        ranks = [local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, local)
        return {"version": STATE_VERSION, "num_workers": self._num_workers, "ranks": ranks}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict  # the rank is known only once the strategy is up: apply in train_dataloader

    def _resume_for(self, rank: int, world: int) -> tuple[dict[int, dict], int]:
        state, self._loaded = self._loaded, None
        if not state:  # a loader made again (or the first): go on from what was consumed so far
            return dict(self._workers), self._next_worker
        ranks = state.get("ranks", [])
        workers = max(self.cfg.data.num_workers, 1)
        if len(ranks) != world or max(state.get("num_workers", 0), 1) != workers:
            warnings.warn(
                f"data position not restored: saved with {len(ranks)} rank(s) x {state.get('num_workers')} "
                f"worker(s), now {world} x {self.cfg.data.num_workers}; the stream restarts from the start",
                stacklevel=2,
            )
            return {}, 0
        mine = ranks[rank]
        return {int(w): s for w, s in mine["workers"].items()}, int(mine["next_worker"]) % workers
