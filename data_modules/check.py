"""`nami data check`: stream every shard once through the training split and report what came out.

With world_size N the data is read as each of the N ranks in turn (same split, same workers as training),
so the report shows per-rank counts and whether the union covers every sample exactly once, and how many
samples went to each aspect-ratio bucket of data.buckets (`buckets`, every bucket of the table in its order,
"HxW" in pixels; zeros included). Duplicates are
found through 64-bit key hashes (8 bytes a key in memory; a false duplicate needs a hash collision, odds
about n^2 / 2^65).
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from nami.config import NamiConfig
from nami.config.buckets import Bucket, bucket_table

from .inputs import checked_shards
from .progress import Progress
from .stream import ShardStream, StreamSpec, make_loader


def _key_hash(key: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


def check_data(cfg: NamiConfig, world_size: int = 1, keys_out: str | Path | None = None) -> dict:
    """Counts (samples, skipped by reason, repaired), throughput, per-rank counts, duplicates."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shards = checked_shards(cfg)  # ConfigError before any work (and precomputed shards encoded for another config)
    hashes = array("Q")
    per_rank = []
    buckets = Counter()
    start = time.perf_counter()
    progress = Progress("data check")
    with open(keys_out, "w", encoding="utf-8") if keys_out else nullcontext() as out, progress:
        for rank in range(world_size):
            final: dict[int, dict] = {}  # worker -> its last (cumulative) counters
            samples = 0
            skipped_before = sum(sum(r["skipped"].values()) for r in per_rank)
            spec = StreamSpec.from_config(cfg, shards, rank, world_size, train=False, flush=True)
            for batch in make_loader(ShardStream(spec), cfg.data.num_workers):
                final[batch.state["worker"]] = batch.state
                keys = batch.all_keys()
                samples += len(keys)
                if keys:
                    buckets[Bucket(*(batch.size or (cfg.resolution, cfg.resolution))).name] += len(keys)
                hashes.extend(_key_hash(k) for k in keys)
                if out is not None:
                    out.writelines(k + "\n" for k in keys)
                progress.update(len(keys), skipped_before + sum(sum(s["skipped"].values()) for s in final.values()))
            skipped = sum((Counter(s["skipped"]) for s in final.values()), Counter())
            repaired = sum((Counter(s["repaired"]) for s in final.values()), Counter())
            per_rank.append(
                {"rank": rank, "samples": samples, "skipped": dict(skipped), "repaired": dict(repaired)}
            )
    seconds = time.perf_counter() - start
    unique = int(len(np.unique(np.frombuffer(hashes, dtype=np.uint64)))) if len(hashes) else 0
    total = sum(r["samples"] for r in per_rank)
    return {
        "shards": len(shards),
        "samples": total,
        "unique": unique,
        "duplicates": total - unique,
        "skipped": dict(sum((Counter(r["skipped"]) for r in per_rank), Counter())),
        "repaired": dict(sum((Counter(r["repaired"]) for r in per_rank), Counter())),
        "seconds": round(seconds, 3),
        "samples_per_s": round(total / seconds, 1) if seconds > 0 else 0.0,
        "world_size": world_size,
        "num_workers": cfg.data.num_workers,
        "per_rank": per_rank,
        "buckets": {b.name: buckets.pop(b.name, 0) for b in bucket_table(cfg)} | dict(buckets),
    }


def format_check(report: dict) -> str:
    """The report as a few human-readable lines."""
    lines = [
        f"shards       {report['shards']}",
        f"samples      {report['samples']}  ({report['unique']} unique, {report['duplicates']} duplicates)",
        f"samples/s    {report['samples_per_s']}  ({report['seconds']} s, {report['num_workers']} workers)",
        "skipped      " + (", ".join(f"{k} {v}" for k, v in sorted(report["skipped"].items())) or "none"),
        "repaired     " + (", ".join(f"{k} {v}" for k, v in sorted(report["repaired"].items())) or "none"),
    ]
    if len(report["buckets"]) > 1:  # HxW pixels: samples
        lines.append("buckets      " + ", ".join(f"{k} {v}" for k, v in report["buckets"].items()))
    if report["world_size"] > 1:
        for r in report["per_rank"]:
            skipped = sum(r["skipped"].values())
            lines.append(f"rank {r['rank']:<7} {r['samples']} samples, {skipped} skipped")
    return "\n".join(lines)
