"""The stream of one (rank, dataloader worker): read its pieces (`split.py`), decode, count skips, batch.

Batches are built inside the workers (the DataLoader runs with batch_size=None) so that each batch knows
its training step: with W workers the DataLoader yields batches round-robin, so the i-th batch of logical
worker w is loader batch i * W + w, and step = that index // batches_per_step. The worker needs no message
from the trainer, and the mapping survives resume because i is part of the saved state.

Buckets (data.buckets): the decoder sends each sample to its aspect-ratio bucket (`Sample.size`); the worker
keeps one pending batch per bucket and emits a batch when its bucket holds data.batch_size samples, so every
batch is one bucket. With the square table there is one bucket and the stream is what it was before buckets.

Epochs: the training stream repeats forever (training stops at trainer.max_steps), so a rank that owns a
few samples fewer than another never runs dry while the others still step: nothing to hang on, and every
batch is full (in every bucket), so stage groups keep static shapes. A bucket's pending samples are carried
over the end of an epoch into the next, never dropped: a training batch may mix samples of two epochs. Each
sample carries the epoch it was read in; per rank, epoch e covers that rank's share of the data exactly once,
so over all ranks epoch e is the dataset exactly once (ranks may cross an epoch boundary a few batches apart,
and a sample of a rare bucket may wait a few epochs for its batch). Check/eval/encode streams run one epoch
and flush: at the end every partial bucket goes out as a smaller batch, in the table's order.

Resume: after each batch the worker attaches its state (epoch, piece, shuffle block, offset in the block,
batches made, skip counts, and the places of its pending samples). Restoring it re-opens the piece, jumps to
the block (tars seek over member bytes, parquet skips row groups) and replays the block's permutation, so the
continuation is exactly the uninterrupted one, shuffled or not: nothing lost, nothing repeated. The cost is
re-reading at most one shuffle block. Pending samples are saved as their places ([epoch, piece, block, item],
four integers each, at most buckets x (batch_size - 1) of them), never as pixels: restoring reads and
decodes them again (each of their blocks once; crops are seeded by epoch and key, so they come back
identical). Shuffling (data.shuffle_buffer = n > 0): shard order per epoch (`split.shard_order`) and a
seeded permutation of each block of n records; a block holds n undecoded records in memory.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby, islice

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
    # Samples read but not yet batched (their bucket not full yet), by their place in the stream: [epoch, piece,
    # block, item of the block], in reading order. Resume reads them again (see the module docstring).
    pending: list[list[int]] = field(default_factory=list)

    def address(self) -> list[int]:
        """The place of the item consumed last (`offset` already counts it)."""
        return [self.epoch, self.piece, self.block, self.offset - 1]

    def to_dict(self, **extra) -> dict:
        pos = {k: getattr(self, k) for k in ("epoch", "piece", "block", "offset", "batches")}
        # no pending samples (always so with one bucket): the state as it was before buckets
        pending = {"pending": [list(a) for a in self.pending]} if self.pending else {}
        return {**pos, "skipped": dict(self.skipped), "repaired": dict(self.repaired), **pending, **extra}

    @classmethod
    def from_dict(cls, d: dict | None) -> WorkerState:
        if not d:
            return cls()
        pos = {k: int(d[k]) for k in ("epoch", "piece", "block", "offset", "batches")}
        pending = [[int(x) for x in a] for a in d.get("pending", [])]
        return cls(**pos, skipped=Counter(d.get("skipped", {})), repaired=Counter(d.get("repaired", {})),
                   pending=pending)  # fmt: skip


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
        """The batches of logical `worker` of `workers`, continuing from `state`: one pending batch per bucket,
        emitted when it holds batch_size samples; a one-pass stream ends by emitting the partial ones (flush)."""
        size = self.spec.plan.batch_size
        pending: dict[tuple[int, int] | None, list[tuple[Sample, list[int]]]] = {}
        for sample, address in self._reread(worker, workers, state):
            pending.setdefault(sample.size, []).append((sample, address))
        emitted = None

        def emit(bucket) -> StageBatch:
            nonlocal emitted
            buf = pending.pop(bucket, [])
            state.pending = sorted(a for waiting in pending.values() for _, a in waiting)  # reading order
            batch = self._emit([s for s, _ in buf], worker, workers, state)
            emitted = (batch.state["skipped"], batch.state["repaired"])
            return batch

        for sample in self.samples(worker, workers, state):
            buf = pending.setdefault(sample.size, [])
            buf.append((sample, state.address()))
            if len(buf) == size:
                yield emit(sample.size)
        for bucket in sorted(pending, key=_bucket_order):  # a one-pass stream's end: nothing stays behind
            yield emit(bucket)
        if self.spec.flush and (dict(state.skipped), dict(state.repaired)) != emitted:
            yield emit(None)

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
            order = self._block_order(len(block), state.epoch, piece, state.block)
            for i in range(state.offset, len(block)):
                state.offset = i + 1
                sample = self._decode(block[order[i]], fmt.columnar, state.epoch, state.skipped, state.repaired)
                if sample is not None:
                    yield sample
            state.block, state.offset = state.block + 1, 0

    def _block_order(self, length: int, epoch: int, piece: Piece, block: int) -> list[int]:
        """The order a block's records are consumed in: as read, or a permutation seeded by its place."""
        order = list(range(length))
        if self.spec.shuffle_block:
            random.Random(f"block:{self.spec.seed}:{epoch}:{piece.shard}:{piece.offset}:{block}").shuffle(order)
        return order

    def _reread(self, worker: int, workers: int, state: WorkerState) -> Iterator[tuple[Sample, list[int]]]:
        """The pending samples of a saved position (`state.pending`), read and decoded again from their places,
        each block once: the same samples (crops are seeded by epoch and key), their skips and repairs counted
        when first read. One that no longer decodes (the data changed since the save) is a counted skip."""
        spec, size = self.spec, max(self.spec.shuffle_block, 1)
        for (epoch, index, block), group in groupby(state.pending, key=lambda a: tuple(a[:3])):
            pieces = worker_pieces(len(spec.shards), spec.rank, spec.world_size, worker, workers, epoch, spec.seed,
                                   spec.shuffle_block > 0)  # fmt: skip
            piece = pieces[index]
            shard = spec.shards[piece.shard]
            fmt = format_of(shard)
            items = list(islice(fmt.read(shard, piece.stride, piece.offset, block * size, spec.read), size))
            order = self._block_order(len(items), epoch, piece, block)
            for address in group:
                if address[3] >= len(items):
                    log.warning("resuming: the pending sample at %s (epoch, piece, block, item) of %s is gone; the "
                                "data changed since the save (counted as truncated)", address, shard.url)  # fmt: skip
                    state.skipped["truncated"] += 1
                    continue
                sample = self._decode(items[order[address[3]]], fmt.columnar, epoch, state.skipped, Counter())
                if sample is not None:
                    yield sample, list(address)

    def _decode(self, item: Record | Failure, columnar: bool, epoch: int, skipped: Counter,
                repaired: Counter) -> Sample | None:  # fmt: skip
        if isinstance(item, Failure):
            if (item.reason, item.shard) not in self._warned:  # epochs repeat: say it once, count it every time
                self._warned.add((item.reason, item.shard))
                detail = item.detail.splitlines()[0][:300] if item.detail else ""
                log.warning("skipping %s at record %d of %s: %s (warned once per shard; counted as data/skipped_%s)",
                            item.reason, item.index, item.shard, detail, item.reason)  # fmt: skip
            skipped[item.reason] += 1
            return None
        rng = random.Random(f"crop:{self.spec.seed}:{epoch}:{item.key}") if self.spec.train else None
        try:
            return decode_record(self.spec.decoder, item, columnar, repaired, rng, epoch)
        except Skip as skip:
            log.debug("skipping %s (%s): %s", item.key, item.shard, skip)
            skipped[skip.reason] += 1
            return None


def _bucket_order(size: tuple[int, int] | None) -> tuple[float, int]:
    """Partial batches at the end of a pass go out in the table's order: by aspect ratio, then height."""
    return (0.0, 0) if size is None else (size[1] / size[0], size[0])


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
