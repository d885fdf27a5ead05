"""Shard writers and configs for the data tests; run as a script it is the DDP key-recording job.

    python tests/data_fixtures.py ddp SHARDS_GLOB OUT_DIR MAX_STEPS [key=value ...]

Lightning re-launches this same command once per rank, so the job must live in a file, not in `-c`.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "tiny.yaml"
LEARNED_TEXT = ["text_encoder.kind=learned", "text_encoder.dim=64", "text_encoder.pooled_dim=64"]


def data_cfg(shards, *overrides: str):
    """tiny.yaml with the learned text encoder, `data.shards`, and more overrides."""
    from nami.config import load

    shards = shards if isinstance(shards, str) else "[" + ",".join(str(s) for s in shards) + "]"
    return load(TINY, [*LEARNED_TEXT, f"data.shards={shards}", *overrides])


def flow_mix(cfg):
    """The stage mix of the flow `cfg` describes: what the runner hands the data module (`parts.flow.mix`)."""
    from nami.parts import build_parts

    return build_parts(cfg, fitted=False, networks=False, encoders=False).flow.mix


def read_as_readers(cfg, ranks: int, workers: int) -> tuple[list[str], Counter]:
    """One evaluation epoch read as each of `ranks` x `workers` readers in turn (the training split, in this
    process): every key read, in reading order, and the skips of all readers together. Exactly once means
    the keys are the written ones without repeats, and each skip is counted by one reader."""
    from data_modules import ShardStream, StreamSpec, WorkerState, resolve_data

    shards = resolve_data(cfg.data)
    keys, skipped = [], Counter()
    for rank in range(ranks):
        spec = StreamSpec.from_config(cfg, shards, rank, ranks, train=False)
        for worker in range(workers):
            state = WorkerState()
            keys += [k for batch in ShardStream(spec).batches(worker, workers, state) for k in batch.all_keys()]
            skipped += state.skipped
    return keys, skipped


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb_png(seed: int, size: tuple[int, int] = (40, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB"))


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header claims width x height pixels (no pixel data: it must be rejected unread)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def mode_images() -> dict[str, bytes]:
    """Valid images in the unusual PIL modes decoding must turn into RGB."""
    grey = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (24, 1)), "L")
    la = Image.merge("LA", (grey, Image.new("L", grey.size, 128)))
    p = Image.new("P", (32, 32), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.paste(1, (0, 0, 16, 32))
    p.info["transparency"] = 0
    rgba = Image.new("RGBA", (36, 30), (0, 255, 0, 255))
    cmyk = Image.new("CMYK", (40, 32), (0, 255, 255, 0))
    i16 = Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))
    return {
        "l.png": encode(grey),
        "la.png": encode(la),
        "p.png": encode(p, transparency=0),
        "rgba.png": encode(rgba),
        "cmyk.jpg": encode(cmyk, "JPEG", quality=95),
        "i16.png": encode(i16),
        "rgb.jpg": encode(Image.new("RGB", (64, 40), (200, 100, 50)), "JPEG", quality=95),
    }


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    """Each sample: {"__key__": key, ext: bytes, ...} written as {key}.{ext} members, in order."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def member_offset(path: Path, name: str) -> int:
    """Byte offset of a member's data inside the tar."""
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset_data


def good(key: str, seed: int, meta: dict | None = None) -> dict[str, bytes]:
    sample = {"__key__": key, "png": rgb_png(seed), "txt": f"caption {key}".encode()}
    if meta is not None:
        sample["json"] = json.dumps(meta).encode()
    return sample


def simple_shards(root: Path, sizes: list[int], prefix: str = "s") -> list[str]:
    """Shards of good samples with the given sizes; returns every key written."""
    keys = []
    for s, n in enumerate(sizes):
        samples = [good(f"{prefix}{s}_{i:04d}", s * 1000 + i) for i in range(n)]
        write_tar(root / f"{prefix}{s:03d}.tar", samples)
        keys += [x["__key__"] for x in samples]
    return keys


# Written by `bad_set`: what a pass over it must yield.
BAD_SET_SKIPS = {
    "undecodable": 2,
    "empty_image": 1,
    "too_small": 1,
    "too_large": 2,
    "no_caption": 2,
    "missing_image": 2,
    "truncated": 1,
    "bad_shard": 1,
}
BAD_SET_REPAIRS = {"caption_not_utf8": 1}
BAD_SET_OPTIONS = ["data.min_size=16", "data.max_pixels=250000"]  # 4x4 is too small, 600x600 too large


def bad_set(root: Path) -> tuple[list[Path], dict[str, object]]:
    """Shards mixing every bad class with good samples and unusual modes (use with BAD_SET_OPTIONS).

    Returns the shard paths and {good key: metadata as written}.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected: dict[str, object] = {}
    samples = []
    for i, (name, data) in enumerate(mode_images().items()):
        key = f"mode_{name.replace('.', '_')}"
        ext = name.split(".")[1]
        # Metadata: GRIT-like fields; keys first seen after sample 5 and floats with all their digits.
        meta = {
            "caption": f"mode {name}",
            "noun_chunks": [[0, 4, 0.1234567890123456789, 0.2, 0.3, 0.4, 0.99]],
        }
        if i >= 5:
            meta["late_key"] = {"ref_exps": [[1, 2, 1e-300, 2.5e300, 0.30000000000000004]], "n": i}
        samples.append({"__key__": key, ext: data, "json": json.dumps(meta).encode()})
        expected[key] = meta
    samples += [
        {"__key__": "bad_undecodable", "jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "txt": b"x"},
        {"__key__": "bad_empty", "png": b"", "txt": b"x"},
        {"__key__": "bad_small", "png": encode(Image.new("RGB", (4, 4))), "txt": b"x"},
        {"__key__": "bad_large", "png": encode(Image.new("RGB", (600, 600))), "txt": b"x"},
        {"__key__": "bad_bomb", "png": bomb_png(), "txt": b"x"},
        {"__key__": "bad_nocaption", "png": rgb_png(1), "json": b'{"caption": null}'},
        {"__key__": "bad_noimage", "txt": b"only a caption"},
    ]
    samples.append(
        {"__key__": "utf8_latin1", "png": rgb_png(2), "txt": "caf\u00e9 au lait".encode("latin-1")}
    )
    expected["utf8_latin1"] = {}
    samples.append(good("late_good", 3, {"caption": "ignored, .txt wins", "score": 0.1 + 0.2}))
    expected["late_good"] = {"caption": "ignored, .txt wins", "score": 0.1 + 0.2}
    mixed = write_tar(root / "mixed.tar", samples)

    # Cut inside the image bytes of the 4th sample: the first three are whole and must be kept.
    cut = write_tar(root / "cut.tar", [good(f"cut_{i}", 10 + i, {"i": i}) for i in range(5)])
    offset = member_offset(cut, "cut_3.png")
    cut.write_bytes(cut.read_bytes()[: offset + 100])
    expected.update({f"cut_{i}": {"i": i} for i in range(3)})

    empty = root / "empty.tar"
    empty.write_bytes(b"")

    rows = [
        {"key": "pq_0", "caption": "row zero", "image": rgb_png(20), "score": 0.5, "tags": ["a", "b"]},
        {"key": "pq_1", "caption": "row one", "image": None, "score": 1.5, "tags": []},
        {"key": "pq_2", "caption": None, "image": rgb_png(21), "score": 2.5, "tags": ["c"]},
        {"key": None, "caption": "row three", "image": rgb_png(22), "score": 3.5, "tags": ["d"]},
        {"key": "pq_4", "caption": "row four", "image": b"broken", "score": 4.5, "tags": []},
    ]
    table = pa.Table.from_pylist(rows)
    parquet = root / "rows.parquet"
    pq.write_table(table, parquet, row_group_size=2)
    for i in (0, 3):
        row = {k: v for k, v in rows[i].items() if k != "image"}
        expected[row["key"] or f"{parquet}:{i}"] = row
    return [mixed, cut, empty, parquet], expected


def _ddp_job(shards: str, out: str, max_steps: int, *overrides: str) -> None:
    """Train a one-parameter module under DDP (2 CPU processes, gloo) and record every key per rank."""
    import lightning as L
    import torch

    from data_modules import ShardDataModule

    class KeyRecorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = []

        def training_step(self, batch, batch_idx):
            for keys, epochs in zip(batch.keys, batch.epochs):
                self.seen += [[k, e, batch.state["worker"], batch.step] for k, e in zip(keys, epochs)]
            # A gradient all-reduce every step: a rank that ran out of batches would hang the other.
            return sum((self.w * x.mean() - 1) ** 2 for x in batch.images if len(x))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def on_train_end(self):
            Path(out, f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    cfg = data_cfg(shards, "data.num_workers=2", "data.batch_size=4", "data.shuffle_buffer=3", *overrides)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=out, every_n_train_steps=3, save_top_k=-1)],
    )
    trainer.fit(KeyRecorder(), datamodule=ShardDataModule(cfg, mix=flow_mix(cfg)))


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "ddp":
        _ddp_job(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:])
    else:
        sys.exit(__doc__)
