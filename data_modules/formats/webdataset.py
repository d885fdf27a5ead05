"""`data.format: webdataset`: tar shards in img2dataset layout (`{key}.jpg|png|webp`, `{key}.txt`, `{key}.json`),
read member by member with `tarfile`. The precomputed shards of `nami data encode` are such tars too.

Why not `datasets`' webdataset builder (the project's chosen library)? On this stack (datasets 5.2) it
decodes images itself and dies on one corrupt JPEG, dies or silently stops on a truncated tar, infers the
json schema from the first 5 samples (later keys dropped, floats truncated) and, with a shard count that
does not divide the ranks, makes every rank read every shard. So tars are read here: metadata stays the
exact bytes that were written, a cut keeps every complete sample before it, and a record that another reader
owns is skipped by seeking over its bytes (no read, no decode). A record is a run of members sharing a key.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator

from ..records import Failure, Record, Shard, owned, reports_bad_shard
from .base import FileFormat, register_format

TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@register_format
class WebDataset(FileFormat):
    name = "webdataset"
    suffixes = (".tar", ".tar.gz", ".tgz")
    columnar = False

    def read_file(self, fileobj, shard: Shard, stride: int, offset: int, start: int,
                  key_column: str) -> Iterator[Record | Failure]:  # fmt: skip
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
    except TAR_ERRORS as err:
        if reports_bad_shard(offset, start):
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
                if key is not None and owned(index, stride, offset, start):
                    yield Record(key, index, shard.url, fields)
                index, key, fields = index + 1, parts[0], {}
            # Only the owner reads a member's bytes; everyone else seeks over them on the next header.
            if owned(index, stride, offset, start):
                fields[parts[1]] = tar.extractfile(member).read()
    except TAR_ERRORS as err:
        # A cut inside a member's bytes (or a corrupt header): the sample in progress is lost, nothing before.
        if key is not None and owned(index, stride, offset, start):
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
        if owned(index, stride, offset, start):
            yield Record(key, index, shard.url, fields)
        if not ending_complete and owned(index + 1, stride, offset, start):
            yield Failure("truncated", index + 1, shard.url, "archive cut inside a header")
    elif owned(index, stride, offset, start):
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
