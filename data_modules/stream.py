"""The stream of one (rank, dataloader worker): read its pieces (`split.py`), decode, count skips, batch.

Batches are built inside the workers (the DataLoader runs with batch_size=None) so that each batch knows
its training step: with W workers the DataLoader yields batches round-robin, so the i-th batch of logical
worker w is loader batch i * W + w, and step = that index // batches_per_step. The worker needs no message
from the trainer, and the mapping survives resume because i is part of the saved state.

Epochs: the training stream repeats forever (training stops at trainer.max_steps), so a rank that owns a
few samples fewer than another never runs dry while the others still step: nothing to hang on, and every
batch is full, so stage groups keep static shapes. Each sample carries the epoch it was read in; per rank,
epoch e covers that rank's share of the data exactly once, so over all ranks epoch e is the dataset
exactly once (ranks may cross an epoch boundary a few batches apart). Check/eval streams run one epoch.

Resume: after each batch the worker attaches its state (epoch, piece, shuffle block, offset in the block,
batches made, skip counts). Restoring it re-opens the piece, jumps to the block (tars seek over member
bytes, parquet skips row groups) and replays the block's permutation, so the continuation is exactly the
uninterrupted one, shuffled or not: nothing lost, nothing repeated. The cost is re-reading at most one
shuffle block. Shuffling (data.shuffle_buffer = n > 0): shard order per epoch (`split.shard_order`) and a
seeded permutation of each block of n records; a block holds n undecoded records in memory.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nami.flow import StageMix

from .collate import BatchPlan, StageBatch, make_batch
from .decode import Decoder, decode_record
from .formats import format_of
from .inputs import decoder_for
from .records import Failure, ReadOptions, Record, Sample, Shard, Skip
from .split import Piece, worker_pieces

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to produce its batches (picklable, built once in the main process)."""

    shards: tuple[Shard, ...]
    decoder: Decoder  # one for the whole stream: images (ImageDecoder) or precomputed shards
    plan: BatchPlan
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle_block: int = 0  # 0: no shuffle
    train: bool = True  # random crops (else centred)
    repeat: bool = True  # epochs forever (training) or one epoch (check, eval, bench)
    flush: bool = False  # a finite stream ends with a batch (maybe empty) carrying its final counts
    read: ReadOptions = ReadOptions()
    tag: str = "train"

    @classmethod
    def from_config(
        cls,
        cfg,
        shards,
        rank: int = 0,
        world_size: int = 1,
        train: bool = True,
        batches_per_step: int = 1,
        joint: bool | None = None,
        mix: StageMix | None = None,
        **kw,
    ) -> StreamSpec:
        """One rank's stream. Training: random crops, shuffled, endless epochs and (unless joint=False)
        stage groups split by `mix`, the flow's stage mix; otherwise one epoch, centre crops, one
        full-resolution group."""
        d = cfg.data
        joint = train if joint is None else joint
        decoder = decoder_for(cfg)
        base = dict(
            shards=tuple(shards),
            decoder=decoder,
            plan=BatchPlan.from_config(cfg, mix, joint, batches_per_step, latents=decoder.latents),
            rank=rank,
            world_size=world_size,
            seed=cfg.seed,
            shuffle_block=d.shuffle_buffer if train else 0,
            train=train,
            repeat=train,
            read=ReadOptions.from_data(d),
            tag="train" if train else "eval",
        )
        return cls(**{**base, **kw})


@dataclass
class WorkerState:
    """Position of one logical worker in its stream, plus its cumulative counters."""

    epoch: int = 0
    piece: int = 0  # index into the epoch's pieces of this worker
    block: int = 0  # shuffle block inside the piece (blocks of max(shuffle_block, 1) owned records)
    offset: int = 0  # items of the block already consumed
    batches: int = 0
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)

    def to_dict(self, **extra) -> dict:
        pos = {k: getattr(self, k) for k in ("epoch", "piece", "block", "offset", "batches")}
        return {**pos, "skipped": dict(self.skipped), "repaired": dict(self.repaired), **extra}

    @classmethod
    def from_dict(cls, d: dict | None) -> WorkerState:
        if not d:
            return cls()
        pos = {k: int(d[k]) for k in ("epoch", "piece", "block", "offset", "batches")}
        return cls(**pos, skipped=Counter(d.get("skipped", {})), repaired=Counter(d.get("repaired", {})))


class ShardStream(IterableDataset):
    """Batches of one rank; each DataLoader worker streams its own pieces (see module docstring)."""

    def __init__(self, spec: StreamSpec, resume: dict[int, dict] | None = None, first_worker: int = 0):
        super().__init__()
        self.spec = spec
        self.resume = resume or {}
        # After a resume the loader must start with the worker that was next; DataLoader always starts
        # with worker 0, so physical worker p plays logical worker (p + first_worker) % W.
        self.first_worker = first_worker
        self._warned: set[tuple[str, str]] = set()  # (reason, shard) pairs this worker has warned about

    def __iter__(self) -> Iterator[StageBatch]:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.first_worker) % workers
        state = WorkerState.from_dict(self.resume.get(worker))
        return self.batches(worker, workers, state)

    def batches(self, worker: int, workers: int, state: WorkerState) -> Iterator[StageBatch]:
        """The batches of logical `worker` of `workers`, continuing from `state`."""
        size = self.spec.plan.batch_size
        buf: list[Sample] = []
        emitted = None
        for sample in self.samples(worker, workers, state):
            buf.append(sample)
            if len(buf) == size:
                batch = self._emit(buf, worker, workers, state)
                emitted = (batch.state["skipped"], batch.state["repaired"])
                yield batch
                buf = []
        final = (dict(state.skipped), dict(state.repaired))
        if buf or (self.spec.flush and final != emitted):
            yield self._emit(buf, worker, workers, state)

    def _emit(self, buf: list[Sample], worker: int, workers: int, state: WorkerState) -> StageBatch:
        spec = self.spec
        step = (state.batches * workers + worker) // spec.plan.batches_per_step
        rng = random.Random(f"groups:{spec.seed}:{spec.rank}:{worker}:{state.batches}")
        state.batches += 1
        snapshot = state.to_dict(
            worker=worker, workers=workers, rank=spec.rank, world_size=spec.world_size, stream=spec.tag
        )
        return make_batch(buf, spec.plan, step, rng, snapshot)

    def samples(self, worker: int, workers: int, state: WorkerState) -> Iterator[Sample]:
        """Decoded samples epoch after epoch (one epoch unless `repeat`), advancing `state` as it goes."""
        spec = self.spec
        while True:
            pieces = worker_pieces(
                len(spec.shards),
                spec.rank,
                spec.world_size,
                worker,
                workers,
                state.epoch,
                spec.seed,
                spec.shuffle_block > 0,
            )
            fresh, kept = state.piece == state.block == state.offset == 0, 0
            while state.piece < len(pieces):
                for sample in self._piece_samples(pieces[state.piece], state):
                    kept += 1
                    yield sample
                state.piece, state.block, state.offset = state.piece + 1, 0, 0
            if not spec.repeat:
                return
            if fresh and not kept:
                raise RuntimeError(
                    f"rank {spec.rank} worker {worker}: a whole epoch of its shards gave no usable sample "
                    f"(skipped: {dict(state.skipped)}); check the data with `nami data check`"
                )
            state.epoch, state.piece = state.epoch + 1, 0

    def _piece_samples(self, piece: Piece, state: WorkerState) -> Iterator[Sample]:
        spec = self.spec
        size = max(spec.shuffle_block, 1)
        shard = spec.shards[piece.shard]
        fmt = format_of(shard)
        items = fmt.read(shard, piece.stride, piece.offset, state.block * size, spec.read)
        while block := list(islice(items, size)):
            order = list(range(len(block)))
            if spec.shuffle_block:
                tag = f"block:{spec.seed}:{state.epoch}:{piece.shard}:{piece.offset}:{state.block}"
                random.Random(tag).shuffle(order)
            for i in range(state.offset, len(block)):
                state.offset = i + 1
                sample = self._decode(block[order[i]], fmt.columnar, state)
                if sample is not None:
                    yield sample
            state.block, state.offset = state.block + 1, 0

    def _decode(self, item: Record | Failure, columnar: bool, state: WorkerState) -> Sample | None:
        if isinstance(item, Failure):
            if (item.reason, item.shard) not in self._warned:  # epochs repeat: say it once, count it every time
                self._warned.add((item.reason, item.shard))
                detail = item.detail.splitlines()[0][:300] if item.detail else ""
                log.warning("skipping %s at record %d of %s: %s (warned once per shard; counted as data/skipped_%s)",
                            item.reason, item.index, item.shard, detail, item.reason)  # fmt: skip
            state.skipped[item.reason] += 1
            return None
        rng = random.Random(f"crop:{self.spec.seed}:{state.epoch}:{item.key}") if self.spec.train else None
        try:
            return decode_record(self.spec.decoder, item, columnar, state.repaired, rng, state.epoch)
        except Skip as skip:
            log.debug("skipping %s (%s): %s", item.key, item.shard, skip)
            state.skipped[skip.reason] += 1
            return None


def _keep(batch):
    """Batches are built in the workers; the loader passes them through."""
    return batch


def make_loader(stream: ShardStream, num_workers: int) -> DataLoader:
    """The DataLoader over a stream of ready batches (batch_size=None: no re-batching)."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_keep,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if num_workers else None,
    )
