"""Data formats: one module per format, each a `Format` (`base.py`) registered under its `data.format` name in
`nami.registry.DATA_FORMATS` (this package is that registry's home: importing it registers the built-in ones).

Built in: `webdataset` (tars; also what `nami data encode` writes), `parquet`, `hf` (Hugging Face `datasets`).
A new format is one module with a `@register_format` class (it may live outside this package: a test or a
user's module registers its own before the config is loaded); nothing else changes. `data.format: auto`
picks the format of each file by its name, among the registered formats' `suffixes`.

The rest of the pipeline knows formats only through `resolve_data` (config -> shards) and `format_of`
(shard -> the format that reads it); `records.py` holds what they hand over.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nami.config import ConfigError, DataConfig
from nami.registry import DATA_FORMATS

from ..records import Failure, ReadOptions, Record, Shard
from ..sources import has_suffix, list_files
from . import hf, parquet, webdataset  # noqa: F401 - registers the built-in formats
from .base import FileFormat, Format, register_format

AUTO = "auto"  # data.format: each file's format from its name

__all__ = ["AUTO", "FileFormat", "Format", "format_named", "format_of", "read_records", "register_format",
           "resolve_data", "resolve_shards"]  # fmt: skip


def format_named(name: str) -> Format:
    """The format registered as `name` (ConfigError naming data.format when there is none)."""
    return DATA_FORMATS.build(name)


def format_of(shard: Shard) -> Format:
    """The format that reads `shard`."""
    return format_named(shard.format)


def resolve_data(data: DataConfig) -> list[Shard]:
    """The shards the `data` section of a config names, in reading order (ConfigError naming the key)."""
    if data.format == AUTO:
        return _by_file_name(data.shards)
    return format_named(data.format).resolve(data.shards, data)


def resolve_shards(spec: Any, fmt: str = AUTO) -> list[Shard]:
    """`data.shards` = `spec` with `data.format` = `fmt` and every other data key at its default."""
    return resolve_data(DataConfig(shards=spec, format=fmt))


def read_records(shard: Shard, stride: int = 1, offset: int = 0, start: int = 0,
                 options: ReadOptions = ReadOptions()) -> Iterator[Record | Failure]:  # fmt: skip
    """The records of `shard` a reader owns (see `Format.read`), read by the shard's format."""
    return format_of(shard).read(shard, stride, offset, start, options)


def _by_file_name(spec: Any) -> list[Shard]:
    """data.format: auto. Files are listed as any format lists them (a directory: the files whose names a
    registered format recognises), then each goes to the format whose suffix it ends with."""
    formats = [format_named(name) for name in DATA_FORMATS.names()]
    formats = [f for f in formats if f.suffixes]
    suffixes = tuple(s for f in formats for s in f.suffixes)
    shards = []
    for url in list_files(spec, suffixes):
        fmt = next((f for f in formats if has_suffix(url, f.suffixes)), None)
        if fmt is None:
            raise ConfigError("data.format", f"cannot tell the format of {url} from its name; set data.format")
        shards.append(Shard(url, fmt.name))
    return shards
