"""Hostile data for the hardening tests: tars whose members expand far beyond their files, deep json, precomputed
shard directories written without any encoder (so that single payloads and description files can be damaged),
and a subprocess that reads data under an address-space limit."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

from .helpers import REPO

MiB = 2**20
ZERO_BLOCKS = b"\0" * 1024  # the end of a tar archive


def member(name: str, data: bytes) -> bytes:
    """One regular tar member: its header and its data padded to whole blocks."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def sample_members(sample: dict[str, bytes]) -> bytes:
    """A sample as `data_fixtures.write_tar` writes it ({"__key__": key, ext: bytes}), without the archive end."""
    return b"".join(member(f"{sample['__key__']}.{ext}", data) for ext, data in sample.items() if ext != "__key__")


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def sparse_member(name: str, data: bytes, real_size: int) -> bytes:
    """An old-GNU sparse member (type S) storing `data` at offset 0 of a file of `real_size` bytes: `tar --sparse`
    writes these for files with holes. Expanded, it is `data` followed by zeros up to `real_size`."""
    head = bytearray(member(name, b"")[:512])
    head[124:136] = _octal(len(data), 12)
    head[156:157] = b"S"
    head[386:410] = _octal(0, 12) + _octal(len(data), 12)  # one data region: (offset 0, len(data) bytes)
    head[482] = 0  # no extension blocks
    head[483:495] = _octal(real_size, 12)
    head[148:156] = b" " * 8
    head[148:156] = f"{sum(head):06o}".encode() + b"\0 "
    return bytes(head) + data + b"\0" * (-len(data) % 512)


def gzip_bomb_tar(path: Path, before: list[dict], name: str, size: int, after: list[dict]) -> Path:
    """A .tar.gz whose member `name` holds `size` zero bytes (a multiple of 1 MiB), between the samples `before`
    and `after`. Written as gzip members (one per MiB of zeros, read back as one stream), so that a 1 GiB
    member costs a file of about 1 MB and no gigabyte is ever in memory here."""
    assert size % MiB == 0
    info = tarfile.TarInfo(name)
    info.size = size
    zeros = gzip.compress(b"\0" * MiB, compresslevel=9)
    with open(path, "wb") as out:
        out.write(gzip.compress(b"".join(sample_members(s) for s in before) + info.tobuf(tarfile.GNU_FORMAT)))
        for _ in range(size // MiB):
            out.write(zeros)
        out.write(gzip.compress(b"".join(sample_members(s) for s in after) + ZERO_BLOCKS))
    return path


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# ---- precomputed shards, written without encoders -------------------------------------------------------
def precomputed_cfg(shards: str, *overrides: str):
    """tiny.yaml reading precomputed shards of a frozen (never built) text encoder: 4 tokens of 8 dims, pooled 6."""
    from nami.config import load

    return load(REPO / "experiments" / "tiny.yaml", [
        "text_encoder.kind=hf", "text_encoder.path=never-built", "text_encoder.dim=8", "text_encoder.pooled_dim=6",
        "text_encoder.max_length=4", "data.precomputed=true", f"data.shards={shards}", "data.num_workers=0",
        "data.shuffle_buffer=0", "data.batch_size=2", *overrides,
    ])  # fmt: skip


def embedding(cfg, seed: int, batch: tuple[int, ...] = ()):
    from nami.text_embedding import TextEmbedding

    g = torch.Generator().manual_seed(seed)
    t = cfg.text_encoder
    mask = torch.zeros(*batch, t.max_length, dtype=torch.bool)
    mask[..., :2] = True
    return TextEmbedding(torch.randn(*batch, t.max_length, t.dim, generator=g), mask,
                         torch.randn(*batch, t.pooled_dim, generator=g))  # fmt: skip


def precomputed_sample(cfg, key: str, seed: int) -> dict:
    """The members of one precomputed record, as `nami data encode` writes them (payload, caption, json)."""
    from data_modules.precomputed import payload

    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(cfg.autoencoder.channels, cfg.latent_size, cfg.latent_size, generator=g)
    return {"safetensors": payload(latent, embedding(cfg, seed), key, cfg.resolution, (0.0, 0.0, 1.0, 1.0)),
            "txt": f"caption {key}".encode(), "json": json.dumps({"source": key}).encode()}  # fmt: skip


def write_precomputed(root: Path, cfg, shards: list[list[dict]], sources: str | None = None) -> Path:
    """A finished `nami data encode` directory for `cfg` (one rank) of the source shards `sources` (default: its
    own tars): `shards` lists each tar's records, as members by extension (`precomputed_sample` gives good
    ones; "__key__" is ignored: records are numbered as `nami data encode` numbers them)."""
    from data_modules.encode import _run_meta
    from data_modules.formats import resolve_shards
    from data_modules.precomputed import META_FILE, UNCONDITIONAL_FILE, payload, progress_path

    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i, records in enumerate(shards):
        name = f"00000_{i:06d}.tar"
        body = b"".join(sample_members({"__key__": f"{n:08d}", **{k: v for k, v in r.items() if k != "__key__"}})
                        for n, r in enumerate(records))  # fmt: skip
        (root / name).write_bytes(body + ZERO_BLOCKS)
        names.append({"name": name, "samples": len(records), "bytes": (root / name).stat().st_size})
    meta = _run_meta(cfg, resolve_shards(sources or str(root)), 1, torch.float32)
    (root / META_FILE).write_text(json.dumps(meta))
    (root / UNCONDITIONAL_FILE).write_bytes(payload(torch.zeros(0), embedding(cfg, 0, (1,)), "", cfg.resolution, None))
    progress = Path(progress_path(str(root), 0))
    progress.parent.mkdir(exist_ok=True)
    progress.write_text(json.dumps({"rank": 0, "num_workers": 0, "shards": names, "workers": {}, "next_worker": 0,
                                    "done": True}))  # fmt: skip
    return root


# ---- reading under a memory limit -----------------------------------------------------------------------
CHECK_UNDER_LIMIT = """
import io, json, resource, sys
import pyarrow as pa, pyarrow.parquet as pq
from nami.config import load
from data_modules.check import check_data

config, headroom, keys_out, *overrides = sys.argv[1:]
cfg = load(config, overrides)
# Arrow's thread pools, one thread each, started now: the limit is for the data, not for thread stacks.
pa.set_cpu_count(1)
pa.set_io_thread_count(1)
table = pa.table({"a": [1]})
buf = io.BytesIO()
pq.write_table(table, buf)
pq.ParquetFile(io.BytesIO(buf.getvalue())).read()
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + int(headroom), resource.RLIM_INFINITY))
print(json.dumps(check_data(cfg, keys_out=keys_out)))
"""


def check_under_limit(headroom: int, keys_out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`nami data check`'s pass over the data (`check_data`, keys written to `keys_out`) in a fresh process
    whose address space may grow by `headroom` bytes once everything is imported: an allocation beyond that
    fails there (MemoryError)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "1"}  # a thread's own malloc arena reserves 64 MB of address space
    return subprocess.run([sys.executable, "-c", CHECK_UNDER_LIMIT, str(REPO / "experiments" / "tiny.yaml"),
                           str(headroom), str(keys_out), *overrides], capture_output=True, text=True, timeout=300,
                          env=env)  # fmt: skip
