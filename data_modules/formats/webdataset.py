"""`data.format: webdataset`: tar shards in img2dataset layout (`{key}.jpg|png|webp`, `{key}.txt`, `{key}.json`),
read member by member with the bounded reader of `tar.py`. The precomputed shards of `nami data encode` are
such tars too.

Why not `datasets`' webdataset builder (the project's chosen library)? On this stack (datasets 5.2) it
decodes images itself and dies on one corrupt JPEG, dies or silently stops on a truncated tar, infers the
json schema from the first 5 samples (later keys dropped, floats truncated) and, with a shard count that
does not divide the ranks, makes every rank read every shard. So tars are read here: metadata stays the
exact bytes that were written, a cut keeps every complete sample before it, and a record that another reader
owns is skipped by seeking over its bytes (no read, no decode). A record is a run of members sharing a key.

Bounds: a record whose members together hold more than data.max_member_bytes is `too_large_member`, and one
with a sparse member `sparse_member`; both are refused before any of their bytes are read (the header's
stored size decides), and the stream goes on with the next record.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..records import Failure, ReadOptions, Record, Shard, owned, reports_bad_shard
from .base import FileFormat, register_format
from .tar import Member, TarReader


@register_format
class WebDataset(FileFormat):
    name = "webdataset"
    suffixes = (".tar", ".tar.gz", ".tgz")
    columnar = False

    def read_file(self, fileobj, shard: Shard, stride: int, offset: int, start: int,
                  options: ReadOptions) -> Iterator[Record | Failure]:  # fmt: skip
        yield from _tar_records(fileobj, shard, stride, offset, start, options.max_member_bytes)


def split_name(name: str) -> tuple[str, str] | None:
    """webdataset's convention: `dir/000000001.json` -> (`dir/000000001`, `json`); the key ends at the first
    dot of the file name, the extension is the rest, lower-cased."""
    slash = name.rfind("/") + 1
    base = name[slash:]
    dot = base.find(".")
    if dot <= 0:  # no extension, or a hidden file such as macOS's `._000000001.jpg`
        return None
    return name[: slash + dot], base[dot + 1 :].lower()


class _Record:
    """The record being gathered: its members' bytes, or why it is refused (then nothing more is read)."""

    def __init__(self, key: str, index: int, limit: int):
        self.key, self.index, self.left = key, index, limit
        self.fields: dict[str, bytes] = {}
        self.refused: tuple[str, str] | None = None

    def add(self, tar: TarReader, member: Member, ext: str) -> None:
        if self.refused:
            return
        if member.sparse:
            self.refused = ("sparse_member", f"{member.name} is a sparse member")
        elif member.size > self.left:
            self.refused = ("too_large_member", f"{member.name}: {member.size} bytes would take the record past "
                                                "data.max_member_bytes")  # fmt: skip
        else:
            self.fields[ext] = tar.read(member, self.left)
            self.left -= member.size

    def item(self, shard: Shard) -> Record | Failure:
        if self.refused:
            return Failure(self.refused[0], self.index, shard.url, self.refused[1])
        return Record(self.key, self.index, shard.url, self.fields)


def _tar_records(fileobj, shard: Shard, stride: int, offset: int, start: int,
                 limit: int) -> Iterator[Record | Failure]:  # fmt: skip
    tar, record, index = None, None, -1
    try:
        tar = TarReader(fileobj)
        for member in tar.members():
            parts = split_name(member.name) if member.regular else None
            if parts is None:
                continue
            if record is None or parts[0] != record.key:
                if record is not None and owned(record.index, stride, offset, start):
                    yield record.item(shard)
                index += 1
                record = _Record(parts[0], index, limit)
            # Only the owner reads a member's bytes; everyone else seeks over them to the next header.
            if owned(index, stride, offset, start):
                record.add(tar, member, parts[1])
    except Exception as err:  # noqa: BLE001 - crafted bytes break a header parser or a decompressor in many ways
        detail = f"{type(err).__name__}: {err}"
        if tar is None or not tar.headers:
            if reports_bad_shard(offset, start):
                yield Failure("bad_shard", -1, shard.url, detail)
        elif record is not None and owned(record.index, stride, offset, start):
            # Corrupt or cut inside a record: the record in progress is lost, nothing before it.
            yield Failure("truncated", record.index, shard.url, detail)
        return
    if not tar.headers and tar.ending != "complete":
        if reports_bad_shard(offset, start):
            yield Failure("bad_shard", -1, shard.url, "empty file" if tar.ending == "eof" else "not a tar archive")
        return
    if record is None:
        return
    # A whole tar ends with zero blocks; anything else is a cut (or a corrupt header, the same to a reader).
    cut_key = _cut_key(tar.cut_block) if tar.ending == "cut" else None
    complete = tar.ending == "complete"
    if complete or (cut_key is not None and cut_key != record.key):
        # The last record is whole (the cut header, if any, names the next key): keep it.
        if owned(record.index, stride, offset, start):
            yield record.item(shard)
        if not complete and owned(record.index + 1, stride, offset, start):
            yield Failure("truncated", record.index + 1, shard.url, "archive cut inside a header")
    elif owned(record.index, stride, offset, start):
        # Cut at a member boundary or inside a header of the same key: completeness cannot be known.
        yield Failure("truncated", record.index, shard.url, "archive ends without its end-of-archive blocks")


def _cut_key(block: bytes) -> str | None:
    """The key named by a partial header, if its name field (first 100 bytes, NUL-terminated) was read."""
    name = block[:100]
    if b"\0" not in name and len(name) < 100:
        return None
    parts = split_name(name.split(b"\0", 1)[0].decode("utf-8", "replace"))
    return parts[0] if parts else None
