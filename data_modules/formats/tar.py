"""A tar reader for untrusted shards: it allocates only what a member really holds, up to a bound the caller
gives, and never from a size a header claims.

Why not `tarfile`? On crafted bytes it reads a pax header or GNU long name of any claimed size into memory,
builds GNU sparse maps as Python lists as long as the archive says (a `.tar.gz` of a few MB expands to
gigabytes of them), expands a sparse member's holes into zeros on read (a 24 KB tar gives a 1.5 GB member),
keeps a TarInfo per member for the archive's life, and raises ValueError as well as TarError. This reader
follows the format (POSIX ustar and pax, GNU long names and sparse headers) from the specification and does
less: a member is its name, its stored size and whether it is a regular file or sparse; data is read only on
request, in chunks, up to a limit; everything else is skipped by seeking.

Compression (gzip, bzip2, xz) is recognised by its magic bytes and read as a stream; seeking over a member
then decompresses and discards it, in constant memory.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from dataclasses import dataclass

BLOCK = 512
HEADER_MAX_BYTES = 2**20  # a pax header or GNU long name beyond this is no real archive's: refused, unread
READ_CHUNK = 2**20
_NO_DATA = frozenset(b"123456")  # hard link, symlink, char / block device, directory, fifo: nothing follows
_REGULAR = frozenset(b"07\0")
_COMPRESSED = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")), (b"BZh", bz2.BZ2File),
               (b"\xfd7zXZ\x00", lzma.LZMAFile))  # fmt: skip


class TarFormatError(Exception):
    """What should be a tar header or a member's data is not (corrupt or cut)."""


@dataclass
class Member:
    name: str
    size: int  # bytes stored after the header (a sparse member's expanded size is never used)
    regular: bool  # a regular file: its bytes are content
    sparse: bool  # a GNU sparse member (old GNU header or pax GNU.sparse.* records)
    data: int  # offset of its data in the (decompressed) stream


class TarReader:
    """Members of one archive in order (`members()`), their data on request (`read`, only forward: a member
    is read before the next is asked for). When the members end, `ending` says how: "complete" (an
    end-of-archive zero block), "eof" (the stream ends where a header should start) or "cut" (a partial or
    invalid header; `cut_block` holds what there was)."""

    def __init__(self, fileobj):
        magic = fileobj.read(6)
        fileobj.seek(0)
        opener = next((o for m, o in _COMPRESSED if magic.startswith(m)), None)
        self.file = opener(fileobj) if opener else fileobj
        self.pos = 0  # position in the (decompressed) stream
        self.ending: str | None = None
        self.cut_block = b""
        self.headers = 0  # valid headers read (none: the stream is no tar at all)

    def members(self) -> Iterator[Member]:
        """Every member. Extended headers (pax, GNU long names) are applied to the member they describe and
        not yielded. Raises TarFormatError (or the decompressor's error) where the stream is corrupt."""
        pending: dict[str, object] = {}  # what extended headers say about the next member
        nxt = 0
        while True:
            self._seek(nxt)
            block = self._read(BLOCK)
            if len(block) < BLOCK or not _checksum_ok(block):
                if not block:
                    self.ending = "eof"
                elif len(block) == BLOCK and not any(block):
                    self.ending = "complete"
                else:
                    self.ending, self.cut_block = "cut", block
                return
            self.headers += 1
            kind, size = block[156], _number(block[124:136])
            data = self.pos
            if kind == ord("S") and block[482]:  # old GNU sparse: extension blocks before the data
                while (ext := self._read(BLOCK)) and len(ext) == BLOCK and ext[504]:
                    pass
                if len(ext) < BLOCK:
                    raise TarFormatError("archive cut inside a sparse header")
                data = self.pos
            nxt = data + _padded(0 if kind in _NO_DATA else size)
            if kind in (ord("x"), ord("g"), ord("L"), ord("K")):
                if size > HEADER_MAX_BYTES:
                    raise TarFormatError(f"an extended header of {size} bytes (more than {HEADER_MAX_BYTES})")
                if kind == ord("g"):  # global pax records: nothing a webdataset member depends on
                    continue
                raw = self._exact(size)
                if kind == ord("x"):
                    pending.update(_pax_records(raw))
                elif kind == ord("L"):
                    pending["path"] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
                continue
            # pax sparse (1.0) members carry their real name apart from `path`
            name = pending.get("GNU.sparse.name") or pending.get("path") or _name(block)
            if "size" in pending:  # pax: a size beyond the header field's range (decimal)
                size = _decimal(pending["size"])
                nxt = data + _padded(size)
            sparse = kind == ord("S") or any(k.startswith("GNU.sparse.") for k in pending)
            pending = {}
            yield Member(str(name), size, kind in _REGULAR or kind == ord("S"), sparse, data)

    def read(self, member: Member, limit: int) -> bytes | None:
        """The member's stored bytes, or None when there are more than `limit` (nothing is read then)."""
        if member.size > limit:
            return None
        self._seek(member.data)
        return self._exact(member.size)

    def _exact(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self._read(min(READ_CHUNK, left))
            if not chunk:
                raise TarFormatError("archive cut inside a member's data")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read(self, n: int) -> bytes:
        data = self.file.read(n)
        self.pos += len(data)
        return data

    def _seek(self, pos: int) -> None:
        if pos != self.pos:  # forward only (a compressed stream decompresses what it skips, in small pieces)
            self.file.seek(pos)
            self.pos = pos


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _number(field: bytes) -> int:
    """A numeric header field: octal digits (NUL / space padded), or GNU base-256 when the top bit is set."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if not all(48 <= c <= 55 for c in text):
        raise TarFormatError(f"not a number in a tar header: {bytes(field)!r}")
    return int(text, 8)


def _decimal(text: str) -> int:
    if not text or not all("0" <= c <= "9" for c in text) or len(text) > 30:
        raise TarFormatError(f"not a size in a pax header: {text[:40]!r}")
    return int(text)


def _checksum_ok(block: bytes) -> bool:
    """The header checksum (the sum of its bytes with the checksum field read as spaces), as unsigned or, as
    some old writers computed it, signed bytes."""
    try:
        stored = _number(block[148:156])
    except TarFormatError:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored in (unsigned, signed)


def _name(block: bytes) -> str:
    """The member name of a header, with the POSIX ustar prefix when there is one."""
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _pax_records(raw: bytes) -> dict[str, str]:
    """pax extended header records, `LENGTH KEY=VALUE\\n` each."""
    out, pos = {}, 0
    while pos < len(raw) and raw[pos:pos + 1] not in (b"\0", b""):
        space = raw.find(b" ", pos, pos + 20)
        digits = raw[pos:space]
        if space < 0 or not digits.isdigit():
            raise TarFormatError("a corrupt pax header")
        length = int(digits)
        record = raw[space + 1 : pos + length]
        if pos + length > len(raw) or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError("a corrupt pax header")
        key, value = record[:-1].split(b"=", 1)
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out
