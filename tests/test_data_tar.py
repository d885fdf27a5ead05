"""The kit's bounded tar reader (`data_modules/formats/tar.py`) reads what Python's `tarfile` writes, in every
format and compression, member for member and byte for byte; and refuses what it must not allocate."""

from __future__ import annotations

import io
import tarfile

import pytest

from data_modules.formats.tar import HEADER_MAX_BYTES, TarFormatError, TarReader

from .data_fixtures import data_cfg, good, read_as_readers
from .hostile_fixtures import ZERO_BLOCKS, member, sample_members

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}


def archive(fmt: int, compression: str) -> bytes:
    """Regular files (empty, multi-block, long and non-ASCII names where the format holds them), a directory
    and a symlink, as `tarfile` writes them."""
    long = "d" * 60 + "/" + "n" * 90 + ".txt"  # ustar: a prefix and a name; gnu / pax: an extended header
    names = {"a.jpg": b"\xff\xd8" + bytes(range(256)) * 9, "empty.txt": b"", long: b"long name", "b/c.json": b"{}"}
    if fmt != tarfile.USTAR_FORMAT:
        names["caf\u00e9/\u00e9t\u00e9.txt"] = "\u00e9t\u00e9".encode()
        names["x" * 200 + ".png"] = b"\x89PNG"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=fmt) as tar:
        folder = tarfile.TarInfo("b")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
        tar.addfile(link)
        for name, data in names.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_members_and_bytes_are_what_tarfile_reads(fmt, compression):
    data = archive(FORMATS[fmt], compression)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        want = [(m.name, m.isfile(), tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    reader = TarReader(io.BytesIO(data))
    got = [(m.name.rstrip("/"), m.regular, reader.read(m, 2**20) if m.regular else None) for m in reader.members()]
    assert got == want and reader.ending == "complete"


def test_an_extended_header_claiming_gigabytes_is_refused_unread(tmp_path):
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 10 * 2**30  # claims 10 GiB, holds 20 bytes
    body = sample_members(good("k0", 0)) + sample_members(good("k1", 1)) + pax.tobuf(tarfile.GNU_FORMAT)
    body += b"20 path=k2.png\n" + b"\0" * 497
    with pytest.raises(TarFormatError, match=str(HEADER_MAX_BYTES)):
        list(TarReader(io.BytesIO(body + member("k2.txt", b"x") + ZERO_BLOCKS)).members())
    shard = tmp_path / "s.tar"
    shard.write_bytes(body + sample_members(good("k2", 2)) + ZERO_BLOCKS)
    keys, skipped = read_as_readers(data_cfg(str(shard), "data.num_workers=0"), 1, 1)
    # k1 may have had more members behind the refused header: counted as truncated, as at any corrupt header
    assert keys == ["k0"] and skipped == {"truncated": 1}
