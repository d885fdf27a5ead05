"""Who reads what: split the shards of an epoch over (rank x dataloader worker), every sample exactly once.

The split runs twice with the same rule, first over ranks, then over the workers of a rank. Whole shards
go round-robin while there are at least as many as parts; the remainder (fewer shards than parts) is
redistributed at the sample level: the parts are dealt into one group per remaining shard and each group
reads its shard with a stride, member j keeping the records with `index % group_size == j`. Strides
compose, so after both levels the readers of any shard own disjoint residues that cover it.

Cost: a part reads at most one shared shard per level. Sharing readers read every tar header of that shard
but seek over the bytes of records they do not own, so the extra I/O is headers, not images, and nothing
is decoded twice. Balance: every rank gets floor(n / ranks) whole shards plus 1/g of one more, so ranks
differ by at most about one shard's worth of samples (shards of unequal size add their difference).
Ranks never wait for each other on data: the training stream repeats epochs (see `stream.py`), and the
finite streams (check, eval) involve no collective until they end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """The records `index % stride == offset` of shard number `shard` (an index into the shard list)."""

    shard: int
    stride: int = 1
    offset: int = 0


def split_pieces(pieces: list[Piece], parts: int, part: int) -> list[Piece]:
    """The pieces of `part` (0 <= part < parts): whole pieces round-robin, the rest shared by index."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} out of range for {parts} parts")
    whole = len(pieces) - len(pieces) % parts
    mine = list(pieces[part:whole:parts])
    rest = pieces[whole:]
    if rest:
        r = len(rest)
        group = part % r  # parts group, group + r, group + 2r, ... share rest[group]
        size = (parts - group + r - 1) // r
        member = part // r
        p = rest[group]
        mine.append(Piece(p.shard, p.stride * size, p.offset + p.stride * member))
    return mine


def shard_order(num_shards: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The epoch's shard order: as listed, or a permutation every rank derives alike from (seed, epoch)."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


def worker_pieces(
    num_shards: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = False,
) -> list[Piece]:
    """The pieces one (rank, worker) reads in `epoch`, in reading order."""
    pieces = [Piece(s) for s in shard_order(num_shards, epoch, seed, shuffle)]
    if not pieces:
        return []
    return split_pieces(split_pieces(pieces, world_size, rank), max(num_workers, 1), worker)
