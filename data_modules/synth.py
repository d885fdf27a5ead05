"""`nami data synth`: write GenEval-Shapes as webdataset shards in img2dataset layout.

Shard `DIR/{n:05d}.tar` holds, per sample, `{key}.png` (or `.jpg`), `{key}.txt` (the caption) and
`{key}.json` (the spec of `nami.eval.shapes` plus img2dataset's key / width / height / status), keys 9 digits.
Output is byte-identical for the same arguments: sample i depends only on (seed, i), and tar headers carry
no time or owner.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from tqdm.auto import tqdm

from nami.eval.shapes import make_spec, render

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def encode_sample(index: int, seed: int, resolution: int, image_format: str = "png") -> dict[str, bytes]:
    """The members of sample `index` by extension."""
    spec = make_spec(index, seed, resolution)
    buf = io.BytesIO()
    kwargs = {"quality": 95} if image_format == "jpg" else {"optimize": False}
    render(spec).save(buf, IMAGE_FORMATS[image_format], **kwargs)
    key = f"{index:09d}"
    meta = {"key": key, "status": "success", "width": resolution, "height": resolution, **spec}
    return {image_format: buf.getvalue(), "txt": spec["caption"].encode(), "json": json.dumps(meta).encode()}


def write_shapes(
    out: str | Path,
    num: int = 10_000,
    shards: int = 10,
    resolution: int = 32,
    seed: int = 0,
    image_format: str = "png",
) -> dict:
    """Write `num` samples over `shards` tars (as even as possible); returns a summary."""
    if num < 1 or shards < 1 or resolution < 8:
        raise ValueError(f"need num >= 1, shards >= 1, resolution >= 8; got {num}, {shards}, {resolution}")
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
                    for ext, data in encode_sample(i, seed, resolution, image_format).items():
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
        "paths": paths,
    }
