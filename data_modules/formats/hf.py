"""`data.format: hf`: any dataset Hugging Face `datasets` streams, read as the kit's shards.

`data.shards` names datasets, not files: a local path that `datasets.load_dataset(path, streaming=True)`
reads (a folder of parquet / arrow / json files, an `imagefolder` with `metadata.jsonl`), a `save_to_disk`
directory (`load_from_disk`, then `to_iterable_dataset`: memory-mapped, never loaded into memory), or a hub
id when online. `data.hf_name` picks the dataset's configuration, `data.hf_split` its split.

The library's own shards (`IterableDataset.num_shards`: its data files; for a saved dataset, its arrow files)
become the kit's shards, so one rule (`split.py`) says who reads what for every format, and the kit's
resume, shuffle and step bookkeeping (`stream.py`) apply unchanged. Why not `split_dataset_by_node` over the
whole dataset plus the library's DataLoader worker split? With a shard count that does not divide the ranks
it makes every rank read every shard, and with fewer shards than workers it stops the extra workers; the
kit's split gives each reader whole shards and, for the remainder, one strided share. Each reader then uses
the library's own tools on its piece: `shard` selects the shard, `skip` jumps to the resume position (whole
Arrow tables are dropped without converting a row), `split_dataset_by_node(strategy="examples")` keeps
every stride-th record, `decode(False)` hands over the image bytes undecoded, and `iter` reads Arrow batches
(`iter`, unlike `__iter__`, does not re-split the shard among DataLoader workers: the kit already did).

Records are numbered 0, 1, ... within a library shard; a reader owns `index % stride == offset` from its
`start`-th owned record on (the contract of `Format.read`). Records are rows by column, as parquet's are:
decoding, skips and counters are the kit's (`decode.py`). Bounds: a row above data.max_member_bytes is refused
before it becomes Python objects (`rows.py`), and an image read by path is read up to the bound; how the
library itself reads its files (parquet pages, json lines) is the library's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nami.config import ConfigError

from ..records import Failure, ReadOptions, Record, Shard, reports_bad_shard
from ..sources import open_shard, shard_patterns
from .base import read_bounded, register_format
from .rows import table_records

log = logging.getLogger(__name__)

HF_BATCH_ROWS = 256  # rows converted to Python at a time


@dataclass(frozen=True)
class HfDataset:
    """One dataset of `data.shards` as resolved: how to open it again (in a worker) and its shard count."""

    path: str
    name: str | None
    split: str
    saved: bool  # a `save_to_disk` directory (load_from_disk) rather than load_dataset(..., streaming=True)
    num_shards: int
    image_column: str

    def shard_url(self, part: int) -> str:
        """A stable name for shard `part` (logs; keys of rows without data.key_column)."""
        config = f"{self.name}/" if self.name else ""
        return f"{self.path}#{config}{self.split}-{part:05d}-of-{self.num_shards:05d}"


_OPEN: dict[HfDataset, Any] = {}  # the opened IterableDataset of each dataset, once per process


@contextmanager
def _quiet():
    """No `datasets` progress bars while resolving (an error stays one line); restored afterwards."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _is_saved(path: str) -> bool:
    """Whether `path` is a `save_to_disk` directory (the files `load_from_disk` looks for)."""
    from datasets import config
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(path)
        names = (config.DATASET_STATE_JSON_FILENAME, config.DATASETDICT_JSON_FILENAME)
        return any(fs.isfile(f"{root.rstrip('/')}/{n}") for n in names)
    except Exception:  # noqa: BLE001 - a hub id is no path; load_dataset reports what is really wrong
        return False


def _pick_split(splits, path: str, split: str):
    if split not in splits:
        have = ", ".join(splits)
        raise ConfigError("data.hf_split", f"{split!r} is not a split of {path} (it has: {have})")
    return splits[split]


def _open(path: str, name: str | None, split: str, saved: bool):
    """The split as an IterableDataset with media decoding off (image bytes reach the kit's decoder)."""
    import datasets

    if saved:
        data = datasets.load_from_disk(path)
        if isinstance(data, datasets.DatasetDict):
            data = _pick_split(data, path, split)
        # One library shard per arrow file (contiguous rows); never more shards than rows.
        shards = max(1, min(len(data.cache_files), len(data)))
        data = data.to_iterable_dataset(num_shards=shards)
    else:
        data = _pick_split(datasets.load_dataset(path, name, streaming=True), path, split)
    return data.decode(False)


def _dataset(origin: HfDataset):
    if origin not in _OPEN:  # a process that did not resolve it (a DataLoader worker started by spawn)
        with _quiet():
            _OPEN[origin] = _open(origin.path, origin.name, origin.split, origin.saved)
    return _OPEN[origin]


@register_format
class HuggingFace:
    """Datasets `datasets.load_dataset(..., streaming=True)` reads; never chosen by a file name."""

    name = "hf"
    suffixes = ()
    columnar = True

    def resolve(self, spec: Any, data: Any) -> list[Shard]:
        return resolve_hf(spec, data.hf_split, data.hf_name, data.image_column, data.caption_column)

    def read(self, shard: Shard, stride: int = 1, offset: int = 0, start: int = 0,
             options: ReadOptions = ReadOptions()) -> Iterator[Record | Failure]:  # fmt: skip
        return hf_records(shard, stride, offset, start, options)


def resolve_hf(spec: Any, split: str, name: str | None, image_column: str, caption_column: str) -> list[Shard]:
    """Open each dataset `data.shards` names (ConfigError naming the key when one cannot be read) and list
    its library shards as the kit's shards, dataset after dataset."""
    shards: list[Shard] = []
    for path in shard_patterns(spec):
        saved = _is_saved(path)
        try:
            with _quiet():
                data = _open(path, name, split, saved)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - missing paths, unknown hub ids, offline mode, bad configs
            detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            # datasets quotes the configuration it lacks
            unknown_name = name is not None and f"'{name}'" in detail
            key = "data.hf_name" if unknown_name else "data.shards"
            raise ConfigError(key, f"{path}: `datasets` cannot load it ({detail})") from None
        columns = list(data.features or {})
        for key, column in (("data.image_column", image_column), ("data.caption_column", caption_column)):
            if columns and column not in columns:
                have = ", ".join(columns)
                raise ConfigError(key, f"{column!r} is not a column of {path} (columns: {have})")
        origin = HfDataset(path, name, split, saved, data.num_shards, image_column)
        _OPEN[origin] = data
        shards += [Shard(origin.shard_url(i), HuggingFace.name, i, origin) for i in range(origin.num_shards)]
    return shards


def _image_bytes(value: Any, limit: int) -> Any:
    """The Image feature's {"bytes", "path"} as bytes: the stored bytes, else the file at `path` (folder
    datasets keep only paths: local files, or hf:// / chained URLs when streamed from the hub, which fsspec
    opens), read up to `limit` bytes (a larger file: `_TooLarge`). None (counted as missing_image) when there is
    neither or the file cannot be read. Read here, not by `datasets`, because its reader raises on one unreadable file; any
    other value (a plain binary column, or a wrong type the decoder reports) passes through."""
    if not isinstance(value, dict):
        return value
    if value.get("bytes") is not None:
        return value["bytes"]
    path = value.get("path")
    if not isinstance(path, str) or not path:
        return None
    try:
        with open_shard(path) as f:
            data = read_bounded(f, limit)
    except Exception as err:  # noqa: BLE001 - fsspec raises OS, value and protocol errors for a bad path
        log.debug("cannot read image %s: %s", path, err)
        return None
    if data is None:
        raise _TooLarge(f"image {path} is larger than data.max_member_bytes")
    return data


class _TooLarge(Exception):
    pass


def hf_records(
    shard: Shard, stride: int = 1, offset: int = 0, start: int = 0, options: ReadOptions = ReadOptions()
) -> Iterator[Record | Failure]:
    """The records of library shard `shard.part` this reader owns, from its `start`-th on, then a failure."""
    from datasets.distributed import split_dataset_by_node

    origin: HfDataset = shard.origin
    try:
        data = _dataset(origin).shard(num_shards=origin.num_shards, index=shard.part)
    except Exception as err:  # noqa: BLE001 - the dataset moved or broke since it was resolved
        if reports_bad_shard(offset, start):
            yield Failure("bad_shard", -1, shard.url, str(err))
        return
    first = offset + start * stride  # raw index of the first owned record
    if first:
        data = data.skip(first)
    if stride > 1:  # after the skip, the owned records are every stride-th from the first
        data = split_dataset_by_node(data, rank=0, world_size=stride, strategy="examples")
    batches = data.with_format("arrow").iter(batch_size=HF_BATCH_ROWS)
    index, tables = first, 0
    while True:
        try:
            table = next(batches, None)
            if table is not None:
                indices = list(range(index, index + stride * table.num_rows, stride))
                items = list(table_records(table, indices, shard.url, options.key_column, options.max_member_bytes,
                                           lambda i: f"{shard.url}:{i}"))  # fmt: skip
        except Exception as err:  # noqa: BLE001 - a corrupt file surfaces as any of the readers' errors
            # Every reader of the shard stops at the same table; the owner of index 0 reports it, once: as
            # bad_shard when nothing of the shard could be read, else as truncated at its next record.
            if offset == 0:
                detail = f"{type(err).__name__}: {err}"
                if first == tables == 0:
                    yield Failure("bad_shard", -1, shard.url, detail)
                else:
                    yield Failure("truncated", index, shard.url, detail)
            return
        if table is None:
            return
        tables += 1
        index += stride * table.num_rows
        for item in items:
            if isinstance(item, Record) and origin.image_column in item.fields:
                try:
                    item.fields[origin.image_column] = _image_bytes(item.fields[origin.image_column],
                                                                    options.max_member_bytes)  # fmt: skip
                except _TooLarge as err:
                    item = Failure("too_large_member", item.index, shard.url, str(err))
            yield item
