"""`nami bench data`: the training pipeline's samples/s next to a bare decode+resize loop over the same files.

Both run in one process on the same shards, alternating `repeats` times (medians reported, since a shared
machine is noisy). The bare loop is the floor of work per sample in one process: read the record, decode,
resize, crop, scale. The pipeline adds captions, metadata, skip accounting, stage grouping, per-stage
pyramids and the DataLoader's worker processes and queues; `ratio` = pipeline / bare says whether that
machinery costs more than the workers win back."""

from __future__ import annotations

import statistics
import time

from nami.config import NamiConfig
from nami.config.buckets import bucket_table
from nami.flow import StageMix

from .decode import image_bytes, image_tensor
from .formats import format_of, resolve_data
from .records import ReadOptions, Record, Shard, Skip
from .stream import ShardStream, StreamSpec, make_loader


def bare_decode_rate(shards: list[Shard], cfg: NamiConfig, samples: int, warmup: int) -> tuple[float, int]:
    """(samples/s, samples timed) of a single-process read + decode + resize loop, cycling the shards."""
    d, buckets = cfg.data, tuple(bucket_table(cfg))
    done, start = 0, time.perf_counter()
    while True:
        before = done
        for shard in shards:
            fmt = format_of(shard)
            for record in fmt.read(shard, options=ReadOptions.from_data(d)):
                if not isinstance(record, Record):
                    continue
                try:
                    data = image_bytes(record, fmt.columnar, d.image_column)
                    image_tensor(data, cfg.resolution, None, d.max_pixels, cfg.min_image_side(), buckets)
                except Skip:
                    continue
                done += 1
                if done == warmup:
                    start = time.perf_counter()
                if done >= warmup + samples:
                    return samples / (time.perf_counter() - start), samples
        if done == before:
            raise RuntimeError("no decodable sample in the shards")


def pipeline_rate(
    shards: list[Shard], cfg: NamiConfig, mix: StageMix, samples: int, warmup_batches: int
) -> tuple[float, int]:
    """(samples/s, samples timed) of the training loader after `warmup_batches` (worker start-up excluded)."""
    done, start = 0, None
    it = iter(make_loader(ShardStream(StreamSpec.from_config(cfg, shards, mix=mix)), cfg.data.num_workers))
    try:
        for i, batch in enumerate(it):
            if i == warmup_batches:
                start = time.perf_counter()
            elif i > warmup_batches:
                done += len(batch)
                if done >= samples:
                    return done / (time.perf_counter() - start), done
    finally:
        del it  # shuts the workers down
    raise RuntimeError("the training stream ended")


def bench_data(cfg: NamiConfig, mix: StageMix, samples: int = 2000, repeats: int = 3,
               warmup_batches: int = 3) -> dict:  # fmt: skip
    """Pipeline vs bare decode throughput on cfg.data.shards, alternating `repeats` times; medians. `mix`: the
    flow's stage mix, which the training batches are split by."""
    shards = resolve_data(cfg.data)  # ConfigError before any work
    warmup = warmup_batches * cfg.data.batch_size
    bare, pipe = [], []
    for _ in range(repeats):  # alternating spreads machine noise evenly over both loops
        bare.append(bare_decode_rate(shards, cfg, samples, warmup)[0])
        pipe.append(pipeline_rate(shards, cfg, mix, samples, warmup_batches)[0])
    bare_rate, pipe_rate = statistics.median(bare), statistics.median(pipe)
    return {
        "pipeline_samples_per_s": round(pipe_rate, 1),
        "bare_decode_samples_per_s": round(bare_rate, 1),
        "ratio": round(pipe_rate / bare_rate, 3),
        "samples_per_s": round(pipe_rate, 1),
        "ratios": [round(p / b, 3) for p, b in zip(pipe, bare)],
        "samples": samples,
        "repeats": repeats,
        "num_workers": cfg.data.num_workers,
        "batch_size": cfg.data.batch_size,
        "resolution": cfg.resolution,
        "shards": len(shards),
    }


def format_bench(report: dict) -> str:
    return (
        f"pipeline     {report['pipeline_samples_per_s']} samples/s ({report['num_workers']} workers, "
        f"batch {report['batch_size']}, {report['resolution']} px)\n"
        f"bare decode  {report['bare_decode_samples_per_s']} samples/s (one process)\n"
        f"ratio        {report['ratio']} (per repeat: {', '.join(map(str, report['ratios']))})"
    )
