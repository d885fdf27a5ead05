"""Raw records from one shard, undecoded: webdataset tars read with `tarfile`, parquet read with pyarrow,
`datasets` shards (data.format: hf) read by the library (`hf.py`).

Why not `datasets`' webdataset builder (the project's chosen library)? On this stack (datasets 5.2) it
decodes images itself and dies on one corrupt JPEG, dies or silently stops on a truncated tar, infers the
json schema from the first 5 samples (later keys dropped, floats truncated) and, with a shard count that
does not divide the ranks, makes every rank read every shard. So tars are read here, member by member:
metadata stays the exact bytes that were written, a cut keeps every complete sample before it, and a record
that another reader owns is skipped by seeking over its bytes (no read, no decode). Parquet goes through
pyarrow, which `datasets`' own parquet streaming wraps, directly: row-group metadata lets a resumed reader
jump to its row without reading what comes before, and only the rows this reader owns are converted.

A shard's records are numbered 0, 1, ... in file order (a tar record is a run of members sharing a key).
A reader owns the records with `index % stride == offset` (see `split.py`) and starts at its `start`-th
owned record. Problems come back as `Failure` items in the stream instead of exceptions.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sources import Shard, open_shard

PARQUET_BATCH_ROWS = 256  # rows converted to Python at a time (bounds memory inside big row groups)
TABLE_FORMATS = ("parquet", "hf")  # records that are rows by column (data.image_column, data.caption_column)


@dataclass
class Record:
    """One undecoded sample: tar members by extension (bytes) or a parquet row by column."""

    key: str
    index: int
    shard: str
    format: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure:
    """A problem in the stream: `bad_shard` (cannot be opened) or `truncated` (unreadable from `index` on)."""

    reason: str
    index: int
    shard: str
    detail: str = ""


def _owned(index: int, stride: int, offset: int, start: int) -> bool:
    return index % stride == offset and index // stride >= start


def read_records(
    shard: Shard, stride: int = 1, offset: int = 0, start: int = 0, key_column: str = "key"
) -> Iterator[Record | Failure]:
    """The records of `shard` this reader owns, from its `start`-th on, then any failure."""
    if shard.format == "hf":
        from .hf import hf_records

        yield from hf_records(shard, stride, offset, start, key_column)
        return
    try:
        fileobj = open_shard(shard.url)
    except (OSError, ValueError) as err:
        if offset == 0 and start == 0:  # exactly one reader of a shard owns index 0: it reports
            yield Failure("bad_shard", -1, shard.url, str(err))
        return
    with fileobj:
        if shard.format == "parquet":
            yield from _parquet_records(fileobj, shard, stride, offset, start, key_column)
        else:
            yield from _tar_records(fileobj, shard, stride, offset, start)


def split_name(name: str) -> tuple[str, str] | None:
    """webdataset's convention: `dir/000000001.json` -> (`dir/000000001`, `json`); the key ends at the first
    dot of the file name, the extension is the rest, lower-cased."""
    slash = name.rfind("/") + 1
    base = name[slash:]
    dot = base.find(".")
    if dot <= 0:  # no extension, or a hidden file such as macOS's `._000000001.jpg`
        return None
    return name[: slash + dot], base[dot + 1 :].lower()


def _tar_records(fileobj, shard: Shard, stride: int, offset: int, start: int) -> Iterator[Record | Failure]:
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        if offset == 0 and start == 0:
            yield Failure("bad_shard", -1, shard.url, str(err))
        return
    index, key, fields = -1, None, {}
    try:
        while True:
            member = tar.next()
            if member is None:
                break
            parts = split_name(member.name) if member.isfile() else None
            if parts is None:
                continue
            if parts[0] != key:
                if key is not None and _owned(index, stride, offset, start):
                    yield Record(key, index, shard.url, "webdataset", fields)
                index, key, fields = index + 1, parts[0], {}
            # Only the owner reads a member's bytes; everyone else seeks over them on the next header.
            if _owned(index, stride, offset, start):
                fields[parts[1]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        # A cut inside a member's bytes (or a corrupt header): the sample in progress is lost, nothing before.
        if key is not None and _owned(index, stride, offset, start):
            yield Failure("truncated", index, shard.url, str(err))
        return
    if key is None:
        return
    # tarfile ends silently at a cut header. A complete tar ends with zero blocks; anything else is a cut.
    tail = _tail(tar)
    if tail and not any(tail):
        ending_complete, cut_key = True, None
    else:
        ending_complete, cut_key = False, _cut_key(tail)
    if ending_complete or (cut_key is not None and cut_key != key):
        # The last sample is whole (the cut header, if any, names the next key): keep it.
        if _owned(index, stride, offset, start):
            yield Record(key, index, shard.url, "webdataset", fields)
        if not ending_complete and _owned(index + 1, stride, offset, start):
            yield Failure("truncated", index + 1, shard.url, "archive cut inside a header")
    elif _owned(index, stride, offset, start):
        # Cut at a member boundary or inside a header of the same key: completeness cannot be known.
        yield Failure("truncated", index, shard.url, "archive ends without its end-of-archive blocks")


def _cut_key(tail: bytes) -> str | None:
    """The key named by a partial header, if its name field (first 100 bytes, NUL-terminated) was read."""
    name = tail[:100]
    if b"\0" not in name and len(name) < 100:
        return None
    parts = split_name(name.split(b"\0", 1)[0].decode("utf-8", "replace"))
    return parts[0] if parts else None


def _tail(tar: tarfile.TarFile) -> bytes:
    """Up to one block of what follows the last member (the end-of-archive blocks when the tar is whole)."""
    try:
        tar.fileobj.seek(tar.offset)
        return tar.fileobj.read(tarfile.BLOCKSIZE)
    except (OSError, EOFError, zlib.error):
        return b""


def _parquet_records(
    fileobj, shard: Shard, stride: int, offset: int, start: int, key_column: str
) -> Iterator[Record | Failure]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fileobj)
    except (pa.ArrowException, OSError) as err:
        if offset == 0 and start == 0:
            yield Failure("bad_shard", -1, shard.url, str(err))
        return
    first = offset + start * stride  # raw index of the first owned row
    row0 = 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        if row0 + rows <= first:  # resume: jump over whole row groups without reading them
            row0 += rows
            continue
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                idx = np.arange(row0, row0 + batch.num_rows)
                keep = np.nonzero((idx % stride == offset) & (idx >= first))[0]
                row0 += batch.num_rows
                if not len(keep):
                    continue
                for i, row in zip(idx[keep].tolist(), batch.take(keep).to_pylist()):
                    value = row.get(key_column)
                    key = str(value) if value is not None else f"{shard.url}:{i}"
                    yield Record(key, i, shard.url, "parquet", row)
        except (pa.ArrowException, OSError) as err:
            # A corrupt page: the rest of the file cannot be trusted. Every reader stops at the same row;
            # its owner reports it, once.
            if _owned(row0, stride, offset, start):
                yield Failure("truncated", row0, shard.url, str(err))
            return
