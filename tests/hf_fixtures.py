"""Datasets that Hugging Face `datasets` reads (data.format: hf), written from the same samples as the tar
fixtures in `data_fixtures.py`, so that the shared data tests run over both."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .data_fixtures import bomb_png, encode, mode_images, rgb_png, simple_shards

HF_KINDS = ("saved", "parquet", "imagefolder")  # save_to_disk, a folder of parquet files, imagefolder + jsonl
HF_OPTIONS = ["data.format=hf"]


def write_hf(path: Path, kind: str, shards: list[list[dict]]) -> Path:
    """Rows {"key", "caption", "image": bytes | None, ...} as a dataset `datasets` reads: `saved` (one arrow
    file per shard when they are equal, else contiguous), `parquet` (one file per shard, the Image feature's
    {"bytes", "path"} struct) or `imagefolder` (image files + metadata.jsonl, one library shard; images read
    by path, so every row needs one)."""
    import datasets
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    datasets.disable_progress_bars()
    columns = {k for shard in shards for row in shard for k in row}
    known = {"key": Value("string"), "caption": Value("string"), "image": ImageFeature()}
    features = Features({k: v for k, v in known.items() if k in columns})
    extra = sorted(columns - set(known))
    if kind == "saved":
        rows = [row for shard in shards for row in shard]
        Dataset.from_list(rows, features=_with(features, rows, extra)).save_to_disk(
            path, num_shards=len(shards)
        )
    elif kind == "parquet":
        path.mkdir(parents=True)
        for i, rows in enumerate(shards):
            Dataset.from_list(rows, features=_with(features, rows, extra)).to_parquet(
                path / f"part-{i:05d}.parquet"
            )
    elif kind == "imagefolder":
        (path / "train").mkdir(parents=True)
        with open(path / "train" / "metadata.jsonl", "w") as meta:
            for row in (row for shard in shards for row in shard):
                name = f"{row['key']}.png"
                (path / "train" / name).write_bytes(row["image"])
                meta.write(
                    json.dumps({"file_name": name} | {k: v for k, v in row.items() if k != "image"}) + "\n"
                )
    else:
        raise ValueError(kind)
    return path


def _with(features, rows: list[dict], extra: list[str]):
    """`features` plus the extra columns, typed as Arrow infers them from the rows."""
    import pyarrow as pa
    from datasets import Features

    if not extra:
        return features
    inferred = Features.from_arrow_schema(
        pa.Table.from_pylist([{k: r.get(k) for k in extra} for r in rows]).schema
    )
    return Features({**features, **inferred})


def hf_dataset(root: Path, kind: str, sizes: list[int], prefix: str = "h") -> tuple[Path, list[str]]:
    """The good samples `simple_shards` writes, as a dataset of `kind`; returns its path and every key."""
    shards = [
        [{"key": f"{prefix}{s}_{i:04d}", "caption": f"caption {prefix}{s}_{i:04d}", "image": rgb_png(s * 1000 + i)}
         for i in range(n)]
        for s, n in enumerate(sizes)
    ]  # fmt: skip
    path = write_hf(root / f"{prefix}_{kind}", kind, shards)
    return path, [row["key"] for shard in shards for row in shard]


SOURCES = ("tar", *(f"hf-{kind}" for kind in HF_KINDS))


def source_set(
    root: Path, source: str, sizes: list[int], prefix: str = "s"
) -> tuple[str, list[str], list[str]]:
    """The good samples of `simple_shards` as tar shards or as an hf dataset of a kind (see SOURCES):
    (data.shards, the overrides that read it, every key written)."""
    if source == "tar":
        return str(root / f"{prefix}*.tar"), [], simple_shards(root, sizes, prefix)
    path, keys = hf_dataset(root, source.removeprefix("hf-"), sizes, prefix)
    return str(path), HF_OPTIONS, keys


# Written by `hf_bad_set`: what a pass over it must yield (string captions leave nothing to repair).
HF_BAD_SET_SKIPS = {
    "undecodable": 1,
    "empty_image": 1,
    "too_small": 1,
    "too_large": 2,
    "no_caption": 2,
    "missing_image": 1,
    "bad_shard": 1,
}


def hf_bad_set(root: Path) -> tuple[Path, dict[str, dict]]:
    """A parquet-folder dataset mixing every bad row class with good rows in unusual modes, then a file that
    is no parquet (use with BAD_SET_OPTIONS). Returns its path and {good key: metadata (the row without its
    image)}."""
    good_rows = [
        {"key": f"mode_{name.replace('.', '_')}", "caption": f"mode {name}", "image": data,
         "score": 0.1 + 0.2 + i, "boxes": [[0.1234567890123456789, 1e-300, 2.5e300]]}
        for i, (name, data) in enumerate(mode_images().items())
    ]  # fmt: skip
    bad_rows = [
        ("bad_undecodable", b"\xff\xd8\xff\xe0 not really a jpeg", "x"),
        ("bad_empty", b"", "x"),
        ("bad_small", encode(Image.new("RGB", (4, 4))), "x"),
        ("bad_large", encode(Image.new("RGB", (600, 600))), "x"),
        ("bad_bomb", bomb_png(), "x"),
        ("bad_nocaption", rgb_png(1), None),
        ("bad_blankcaption", rgb_png(2), "  "),
        ("bad_noimage", None, "only a caption"),
    ]
    bad = [{"key": k, "caption": c, "image": d, "score": 0.0, "boxes": []} for k, d, c in bad_rows]
    rows = good_rows[:4] + bad[:4] + good_rows[4:] + bad[4:]
    path = write_hf(root / "hf_bad", "parquet", [rows[:9], rows[9:]])
    (path / "part-00002.parquet").write_bytes(b"PAR1 this is no parquet file PAR1")
    return path, {r["key"]: {k: v for k, v in r.items() if k != "image"} for r in good_rows}
