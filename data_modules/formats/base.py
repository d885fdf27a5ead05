"""The `Format` protocol: what a data format tells the pipeline, and `register_format`, which makes one a value of
`data.format`. `FileFormat` is the common case: shards are files that `data.shards` names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Protocol, TypeVar

from nami.registry import DATA_FORMATS

from ..records import Failure, ReadOptions, Record, Shard, reports_bad_shard
from ..sources import list_files, open_shard


class Format(Protocol):
    """One way of storing samples. A format is registered by name (`register_format`) and built without
    arguments; it holds no state, so every process (DataLoader workers included) builds its own.

    - `name`: the value of `data.format` that selects it (also `Shard.format` of the shards it resolves).
    - `suffixes`: file-name endings by which `data.format: auto` recognises its files (empty: never by name).
    - `columnar`: its records are rows by column (`data.image_column`, `data.caption_column`; the metadata is
      the row without the image) rather than members by extension (`jpg`/`png`/..., `txt`, `json`).
    - `resolve(spec, data)`: `data.shards` (`spec`) -> shards, in reading order; `data` is the whole `data`
      config section. Bad input is a `ConfigError` naming the key.
    - `read(shard, stride, offset, start, options)`: the records of `shard` this reader owns
      (`records.owned`), from its `start`-th owned record on, then any `Failure`; never raises for bad data.
      Records that other readers own should cost as little as possible (no decode, ideally no read).
      `options` (`records.ReadOptions`): the key column, and `max_member_bytes`: a record holding a larger
      member or value is a `Failure("too_large_member")` in its place, refused before the bytes are read
      where the format can tell (`read_bounded`).
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    columnar: ClassVar[bool]

    def resolve(self, spec: Any, data: Any) -> list[Shard]: ...

    def read(self, shard: Shard, stride: int = 1, offset: int = 0, start: int = 0,
             options: ReadOptions = ReadOptions()) -> Iterator[Record | Failure]: ...  # fmt: skip


F = TypeVar("F", bound=type)


def register_format(cls: F) -> F:
    """Class decorator: make `cls` the format named `cls.name` (one home for the name)."""
    return DATA_FORMATS.register(cls.name)(cls)


class FileFormat:
    """A format whose shards are files: `data.shards` is expanded to files (`sources.list_files`, a directory
    standing for its files with this format's suffixes), one shard per file."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    columnar: ClassVar[bool] = False

    def resolve(self, spec: Any, data: Any) -> list[Shard]:
        return [Shard(url, self.name) for url in list_files(spec, self.suffixes)]

    def read(self, shard: Shard, stride: int = 1, offset: int = 0, start: int = 0,
             options: ReadOptions = ReadOptions()) -> Iterator[Record | Failure]:  # fmt: skip
        """The file opened (one that cannot be is a `bad_shard`, reported by the reader that owns record 0),
        then its records from `read_file`."""
        try:
            fileobj = open_shard(shard.url)
        except (OSError, ValueError) as err:
            if reports_bad_shard(offset, start):
                yield Failure("bad_shard", -1, shard.url, str(err))
            return
        with fileobj:
            yield from self.read_file(fileobj, shard, stride, offset, start, options)

    def read_file(self, fileobj, shard: Shard, stride: int, offset: int, start: int,
                  options: ReadOptions) -> Iterator[Record | Failure]:  # fmt: skip
        raise NotImplementedError


READ_CHUNK = 2**20  # bytes read at a time by `read_bounded`


def read_bounded(fileobj, limit: int) -> bytes | None:
    """All of `fileobj` if it holds at most `limit` bytes, else None; read in chunks, so that memory never
    exceeds what is really there up to `limit` plus one chunk (a size claimed by a header is never trusted
    for an allocation, and `read()` without a size is never called)."""
    chunks, total = [], 0
    while chunk := fileobj.read(min(READ_CHUNK, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
    return b"".join(chunks)
