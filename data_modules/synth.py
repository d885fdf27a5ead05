"""`nami data synth`: write GenEval-Shapes as webdataset shards in img2dataset layout.

Shard `DIR/{n:05d}.tar` holds, per sample, `{key}.png` (or `.jpg`), `{key}.txt` (the caption) and
`{key}.json` (the spec of `nami.eval.shapes` plus img2dataset's key / width / height / status), keys 9 digits.
Output is byte-identical for the same arguments: sample i depends only on (seed, i), and tar headers carry
no time or owner. With several aspect ratios (`--aspect-ratios 1:2,1:1,2:1`, width:height) sample i is drawn at
ratio (i // 6) mod n, so every category meets every ratio alike; each image holds about resolution^2 pixels and
its shapes are sized by its shorter side (`nami.eval.shapes`). One ratio of 1:1 is the square default.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from tqdm.auto import tqdm

from nami.errors import ConfigError
from nami.eval.shapes import CATEGORIES, make_spec, render, spec_size

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
MAX_ASPECT = 4.0  # from 1:4 to 4:1, the range of data.buckets=auto


def parse_aspect_ratios(text: str, key: str = "--aspect-ratios") -> list[float]:
    """"1:2,1:1,2:1" (width:height) -> [0.5, 1.0, 2.0]; a malformed or out-of-range entry is one ConfigError line."""
    ratios = []
    for item in text.split(","):
        w, sep, h = item.strip().partition(":")
        if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise ConfigError(key, f"{item.strip()!r} is not width:height in whole numbers (e.g. 1:2,1:1,2:1)")
        ratio = int(w) / int(h)
        if not 1 / MAX_ASPECT <= ratio <= MAX_ASPECT:
            raise ConfigError(key, f"{item.strip()} lies outside 1:{MAX_ASPECT:g} to {MAX_ASPECT:g}:1")
        ratios.append(ratio)
    return ratios


def aspect_of(index: int, aspect_ratios: list[float] | None) -> float:
    """The aspect ratio of sample `index`: cycled per round of the six categories."""
    if not aspect_ratios:
        return 1.0
    return aspect_ratios[(index // len(CATEGORIES)) % len(aspect_ratios)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def encode_sample(index: int, seed: int, resolution: int, image_format: str = "png",
                  aspect: float = 1.0) -> dict[str, bytes]:  # fmt: skip
    """The members of sample `index` by extension (`aspect`: width / height of its image)."""
    spec = make_spec(index, seed, resolution, aspect)
    buf = io.BytesIO()
    kwargs = {"quality": 95} if image_format == "jpg" else {"optimize": False}
    render(spec).save(buf, IMAGE_FORMATS[image_format], **kwargs)
    key = f"{index:09d}"
    width, height = spec_size(spec)
    meta = {"key": key, "status": "success", "width": width, "height": height, **spec}
    return {image_format: buf.getvalue(), "txt": spec["caption"].encode(), "json": json.dumps(meta).encode()}


def write_shapes(
    out: str | Path,
    num: int = 10_000,
    shards: int = 10,
    resolution: int = 32,
    seed: int = 0,
    image_format: str = "png",
    aspect_ratios: list[float] | None = None,
) -> dict:
    """Write `num` samples over `shards` tars (as even as possible), at `aspect_ratios` (width / height, cycled;
    None: square); returns a summary."""
    if num < 1 or shards < 1 or resolution < 8:
        raise ValueError(f"need num >= 1, shards >= 1, resolution >= 8; got {num}, {shards}, {resolution}")
    if aspect_ratios and min(min(spec_size(make_spec(0, seed, resolution, a))) for a in aspect_ratios) < 8:
        raise ValueError(f"a side below 8 px at resolution {resolution} and aspect ratios {aspect_ratios}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if num >= 10**9:
        raise ValueError("keys have 9 digits: num must be < 1e9")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = min(shards, num)
    paths = []
    with tqdm(total=num, desc="synth", unit="sample", disable=None) as bar:
        for s in range(shards):
            path = out / f"{s:05d}.tar"
            tmp = path.with_name(path.name + ".tmp")  # a crash leaves no half-written shard behind
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(s * num // shards, (s + 1) * num // shards):
                    aspect = aspect_of(i, aspect_ratios)
                    for ext, data in encode_sample(i, seed, resolution, image_format, aspect).items():
                        _add(tar, f"{i:09d}.{ext}", data)
                    bar.update(1)
            os.replace(tmp, path)
            paths.append(str(path))
    return {
        "out": str(out),
        "samples": num,
        "shards": len(paths),
        "resolution": resolution,
        "seed": seed,
        "image_format": image_format,
        **({"aspect_ratios": list(aspect_ratios)} if aspect_ratios else {}),
        "paths": paths,
    }
