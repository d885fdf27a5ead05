"""`nami data encode`: stream the configured shards once, run the frozen encoders, write precomputed shards.

Reading is the training reader's (split over ranks x dataloader workers, every sample exactly once; bad
samples skipped and counted by the same reasons), in evaluation mode: one pass, centre crops, no shuffle.
Each sample is encoded at its aspect-ratio bucket (data.buckets; batches hold one bucket each, the partial
ones flushed at the end of the pass) and its payload's header names the bucket.
The encoders come in from the caller (`nami.parts.build_encoders`; this package sits below the models), with
the device and autocast dtype to run them in. The layout is `precomputed.py`'s.

Resume. Output shards close at a batch boundary once they hold `shard_size` samples. A shard is written to
`NAME.tmp`; then the rank's progress file is replaced atomically, naming the shard (its sample count and
byte size) and every dataloader worker's stream position after the shard's last batch; then `NAME.tmp`
becomes `NAME`. A killed rank therefore restarts from the end of its last finished shard: the samples of
the unfinished one are read and encoded again, nothing is lost or written twice. A finished shard is never
replaced: a shard file that the progress does not account for, or a recorded one that changed, stops the
run with one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from nami.config import ConfigError, NamiConfig
from nami.text_embedding import TextEmbedding

from .formats import resolve_data
from .precomputed import (FORMAT, META_FILE, PAYLOAD, PROGRESS_DIR, UNCONDITIONAL_FILE, VERSION, encoder_fingerprint,
                          payload, progress_path, recorded_fingerprint)  # fmt: skip
from .precomputed_dir import read_meta, read_progress
from .progress import Progress
from .records import Sample
from .stream import ShardStream, StreamSpec, make_loader


@dataclass
class SampleBatch:
    """What an encode worker hands over: decoded samples (crops included) and its stream state."""

    samples: list[Sample]
    state: dict = field(default_factory=dict)


class EncodeStream(ShardStream):
    """The training reader's stream, handing over the samples themselves (`make_batch` would drop the crop)."""

    def _emit(self, buf, worker, workers, state) -> SampleBatch:
        state.batches += 1
        snapshot = state.to_dict(worker=worker, workers=workers, rank=self.spec.rank,
                                 world_size=self.spec.world_size, stream="encode")  # fmt: skip
        return SampleBatch(list(buf), snapshot)


def _write_json(path: Path, data: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _run_meta(cfg: NamiConfig, shards, world_size: int, storage: torch.dtype) -> dict:
    urls = "\n".join(s.url for s in shards).encode()
    return {"format": FORMAT, "version": VERSION, "encoder": encoder_fingerprint(cfg),
            "storage_dtype": str(storage).removeprefix("torch."), "world_size": world_size,
            "sources": {"shards": len(shards), "sha256": hashlib.sha256(urls).hexdigest()}}  # fmt: skip


def _claim(out: Path, meta: dict) -> None:
    """Write the directory's metadata, or check that it describes this very encode (a resumed or other rank)."""
    path = out / META_FILE
    old = read_meta(str(out), "--out")  # a damaged one: one line naming it
    if old is None:
        _write_json(path, meta)
        return
    recorded = {"encoder": recorded_fingerprint(old.get("encoder", {})), "sources": old.get("sources", {})}
    for section in ("encoder", "sources"):
        for key in sorted(set(meta[section]) | set(recorded[section])):
            was, now = recorded[section].get(key), meta[section].get(key)
            if was != now:
                name = key if section == "encoder" else "data.shards"
                raise ConfigError(name, f"{out} holds an encode with {section} {key}={was!r}, this one has {now!r}; "
                                        "use another --out")  # fmt: skip
    for key in ("world_size", "storage_dtype"):
        if meta[key] != old.get(key):
            raise ConfigError(f"--{key.replace('_', '-')}", f"{out} was encoded with {key} {old.get(key)}, now "
                                                            f"{meta[key]}; resume with the same or use another --out")  # fmt: skip


def _restore(out: Path, rank: int, num_workers: int) -> dict:
    """This rank's progress (fresh when none), its finished shards checked and a cut rename completed."""
    path = Path(progress_path(str(out), rank))
    progress = read_progress(str(out), rank, "--out")  # a damaged one: one line naming it
    if progress is None:
        return {"rank": rank, "num_workers": num_workers, "shards": [], "workers": {}, "next_worker": 0,
                "done": False}  # fmt: skip
    if progress["num_workers"] != num_workers:
        was = progress["num_workers"]
        raise ConfigError("data.num_workers", f"{path} was written with {was} dataloader workers; resume with "
                                              f"data.num_workers={was}")  # fmt: skip
    for shard in progress["shards"]:
        final = out / shard["name"]
        tmp = final.with_name(final.name + ".tmp")
        if not final.exists() and tmp.exists() and tmp.stat().st_size == shard["bytes"]:
            os.replace(tmp, final)  # killed between the progress write and the rename
        if not final.exists() or final.stat().st_size != shard["bytes"]:
            raise ConfigError("--out", f"{final} is recorded as finished in {path} but is missing or changed; "
                                       "restore it or encode into another --out")  # fmt: skip
    return progress


class ShardWriter:
    """One output tar, written as NAME.tmp until `close`."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w")
        self.samples = 0

    def add(self, sample: Sample, latent: torch.Tensor, text: TextEmbedding, resolution: int) -> None:
        """One sample: its latent and text embedding (one row each) at its bucket, caption and metadata."""
        base = f"{self.samples:08d}"
        members = {PAYLOAD: payload(latent, text, sample.key, resolution, sample.crop, sample.size),
                   "txt": sample.caption.encode("utf-8"),
                   "json": json.dumps(sample.metadata, default=str).encode("utf-8")}  # fmt: skip
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{base}.{ext}")
            info.size, info.mtime = len(data), 0
            self.tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> int:
        self.tar.close()
        with open(self.tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        return self.tmp.stat().st_size


def encode_shards(cfg: NamiConfig, out: str | Path, encoders: Callable[[], tuple], rank: int = 0,
                  world_size: int = 1, device: torch.device | str = "cpu", autocast: torch.dtype | None = None,
                  storage: torch.dtype = torch.float32, shard_size: int = 1000) -> dict:  # fmt: skip
    """Encode this rank's share of `data.shards` into `out` (resuming what a killed run left); a report.

    `encoders()` builds (text_encoder, autoencoder) on `device`, as `nami.parts.build_encoders` does; it is
    called after the inputs and `out` are checked, and not at all when this rank is done. `text_encoder(prompts)`
    gives an embedding with .states/.mask/.pooled, `autoencoder.encode(images)` the latents; they run under
    `autocast` (None: full precision) and their outputs are stored as `storage`."""
    if not 0 <= rank < world_size:
        raise ConfigError("--rank", f"must lie in [0, {world_size}), got {rank}")
    shards = resolve_data(cfg.data)  # ConfigError before any work
    out = Path(out)
    (out / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    _claim(out, _run_meta(cfg, shards, world_size, storage))
    progress = _restore(out, rank, cfg.data.num_workers)
    device = torch.device(device)
    if progress["done"] and (out / UNCONDITIONAL_FILE).exists():
        return _report(out, rank, world_size, progress, 0, 0.0)
    text_encoder, autoencoder = encoders()
    if getattr(text_encoder, "trainable", False):
        raise ConfigError("text_encoder.kind", f"{cfg.text_encoder.kind} trains with the model: its states cannot "
                                               "be precomputed; use a frozen encoder (minilm, hf)")  # fmt: skip

    def run(fn, *args):
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            return fn(*args)

    def for_storage(embedding: TextEmbedding) -> TextEmbedding:
        """The mask as bool, states and pooled in the storage dtype."""
        return TextEmbedding(embedding.states.to(storage), embedding.mask.bool(), embedding.pooled.to(storage))

    if not (out / UNCONDITIONAL_FILE).exists():
        uncond = for_storage(run(text_encoder, [""]))
        tmp = out / f"{UNCONDITIONAL_FILE}.{os.getpid()}.tmp"
        tmp.write_bytes(payload(torch.zeros(0), uncond, "", cfg.resolution, None))
        os.replace(tmp, out / UNCONDITIONAL_FILE)

    start, samples = time.perf_counter(), 0
    if not progress["done"]:
        workers = {int(w): s for w, s in progress["workers"].items()}
        spec = StreamSpec.from_config(cfg, shards, rank, world_size, train=False, joint=False, flush=True)
        stream = EncodeStream(spec, resume=workers, first_worker=progress["next_worker"])
        writer = None
        with Progress(f"encode rank {rank}") as console:
            for batch in make_loader(stream, cfg.data.num_workers):
                if batch.samples:
                    if writer is None:
                        writer = _open_shard(out, rank, len(progress["shards"]))
                    images = torch.stack([s.image for s in batch.samples]).to(device)
                    latents = run(autoencoder.encode, images).to(storage).cpu()
                    text = for_storage(run(text_encoder, [s.caption for s in batch.samples])).to("cpu")
                    for i, sample in enumerate(batch.samples):
                        writer.add(sample, latents[i], text.row(i), cfg.resolution)
                    samples += len(batch.samples)
                w = batch.state["worker"]
                workers[w] = batch.state
                console.update(len(batch.samples), sum(sum(s["skipped"].values()) for s in workers.values()))
                progress["workers"], progress["next_worker"] = workers, (w + 1) % max(batch.state["workers"], 1)
                if writer is not None and writer.samples >= shard_size:
                    _finish(out, rank, progress, writer)
                    writer = None
        if writer is not None:
            _finish(out, rank, progress, writer)
        progress["done"] = True
        _write_json(Path(progress_path(str(out), rank)), progress)
    return _report(out, rank, world_size, progress, samples, time.perf_counter() - start)


def _report(out: Path, rank: int, world_size: int, progress: dict, encoded: int, seconds: float) -> dict:
    """This rank's totals over every run (the counters are cumulative per worker and restored on resume, so
    they count each source record once however often the encode was killed) and this run's share."""
    states = progress["workers"].values()
    total = sum(s["samples"] for s in progress["shards"])
    return {
        "out": str(out), "rank": rank, "world_size": world_size, "samples": total, "encoded_now": encoded,
        "shards": [s["name"] for s in progress["shards"]],
        "skipped": dict(sum((Counter(s["skipped"]) for s in states), Counter())),
        "repaired": dict(sum((Counter(s["repaired"]) for s in states), Counter())),
        "seconds": round(seconds, 3), "samples_per_s": round(encoded / seconds, 1) if seconds > 0 else 0.0,
    }  # fmt: skip


def format_encode(report: dict) -> str:
    """The report as a few human-readable lines."""
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report["skipped"].items()) if v) or "none"
    return "\n".join([
        f"rank {report['rank']} of {report['world_size']}: {report['samples']} samples in "
        f"{len(report['shards'])} shards in {report['out']} ({report['encoded_now']} encoded now, "
        f"{report['samples_per_s']} samples/s)",
        f"skipped      {skipped}",
    ])  # fmt: skip


def _open_shard(out: Path, rank: int, index: int) -> ShardWriter:
    path = out / f"{rank:05d}_{index:06d}.tar"
    if path.exists():  # not in the progress (checked in _restore): someone else's file, or a lost record
        raise ConfigError("--out", f"refusing to overwrite {path}: the encode progress does not record it; "
                                   "move it away or encode into another --out")  # fmt: skip
    return ShardWriter(path)


def _finish(out: Path, rank: int, progress: dict, writer: ShardWriter) -> None:
    """Close the shard, record it with the positions after its last batch, then give it its final name."""
    size = writer.close()
    progress["shards"].append({"name": writer.path.name, "samples": writer.samples, "bytes": size})
    _write_json(Path(progress_path(str(out), rank)), progress)
    os.replace(writer.tmp, writer.path)
