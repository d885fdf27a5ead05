"""Record -> sample for image shards: image decoded to RGB, sent to the aspect-ratio bucket nearest its own
(`nami.config.buckets`; data.buckets square: the resolution x resolution square), cropped to the bucket's aspect
ratio by the least amount and resized to cover it, scaled to [-1, 1]; caption and metadata extracted. A sample that cannot be used raises `Skip` with its reason; a sample
that is kept after a repair (e.g. a caption that is not UTF-8) is counted in `repaired`.

A stream decodes with one `Decoder`, chosen once from the config: `ImageDecoder` here, or the precomputed
shards' `PrecomputedDecoder` (`precomputed.py`). Where the image, caption and metadata sit in a record
depends on the format's layout only (`Format.columnar`), never on the format's name. Records reach a decoder
through `decode_record`, which turns any exception a decoder raises on the bytes it was handed into a counted
skip (`undecodable`, the detail naming the exception's class): one sample never stops a stream.

Bounds, besides data.max_member_bytes in the readers: an image is refused from its header above
data.max_pixels, before a pixel is decoded, and only the web's image formats reach PIL (IMAGE_FORMATS);
captions and json metadata have theirs in `metadata.py`.
"""

from __future__ import annotations

import io
import logging
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from PIL import Image

from nami.config.buckets import Bucket, bucket_table, nearest_bucket

from .metadata import caption_text, json_metadata
from .records import Record, Sample, Skip

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
# The decoders PIL may use on crawled bytes, whatever the member's extension says: the web's image formats.
# Not its forty others: EPS would hand the bytes to Ghostscript on load, and rarely used decoders are where
# crafted headers find their way.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def open_image(data: bytes | None, max_pixels: int, min_size: int = 0) -> Image.Image:
    """Open (header only) and check size limits before any pixel is decoded."""
    if data is None:
        raise Skip("missing_image")
    if not isinstance(data, (bytes, bytearray, memoryview)):  # e.g. an int64 image column
        raise Skip("undecodable", f"the image is {type(data).__name__}, not bytes")
    if len(data) == 0:
        raise Skip("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as err:
        raise Skip("too_large", str(err)) from None
    except Exception as err:  # noqa: BLE001 - crawled bytes break decoders in many ways; all mean "skip"
        raise Skip("undecodable", f"{type(err).__name__}: {err}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise Skip("too_large", f"{w}x{h} > {max_pixels} pixels")
    if min(w, h) < max(min_size, 1):
        raise Skip("too_small", f"{w}x{h} < {min_size}")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency composited on white, 16-bit and float greys scaled to 8 bits."""
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        # PIL's own I;16 -> RGB conversion clips at 255 (a 16-bit image turns white); scale instead.
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) if arr.size else 0.0
        if mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        elif mode in _SIXTEEN_BIT or peak > 255.0:
            arr = arr / 257.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img if mode == "RGB" else img.convert("RGB")


def crop_box(size: tuple[int, int], rng: random.Random | None = None,
             bucket: Bucket | None = None) -> tuple[int, int, int, int]:  # fmt: skip
    """The crop (left, top, right, bottom) of an image of `size` (width, height) to the aspect ratio of `bucket`
    (None: a square) that removes the least: the whole of one side, as much of the other as the ratio keeps.
    Random with `rng`, else centred."""
    w, h = size
    bw, bh = (bucket.width, bucket.height) if bucket else (1, 1)
    if w * bh >= h * bw:  # wider than the bucket: keep the height
        ch, cw = h, min(w, max(1, round(h * bw / bh)))
    else:
        cw, ch = w, min(h, max(1, round(w * bh / bw)))
    left = rng.randint(0, w - cw) if rng else (w - cw) // 2
    top = rng.randint(0, h - ch) if rng else (h - ch) // 2
    return left, top, left + cw, top + ch


def resize_crop(img: Image.Image, bucket: Bucket, rng: random.Random | None = None,
                box: tuple[int, int, int, int] | None = None) -> Image.Image:  # fmt: skip
    """Crop to the bucket's aspect ratio (`box`, else `crop_box`) and resize to cover it, in one resampling."""
    box = box or crop_box(img.size, rng, bucket)
    return img.resize((bucket.width, bucket.height), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) float32 in [-1, 1]."""
    arr = torch.from_numpy(np.array(img, dtype=np.uint8))
    return arr.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def image_tensor(
    data: bytes | None,
    resolution: int,
    rng: random.Random | None = None,
    max_pixels: int = 64_000_000,
    min_size: int = 0,
    buckets: tuple[Bucket, ...] = (),
) -> torch.Tensor:
    """Bytes -> (3, H, W) in [-1, 1] at the nearest bucket (none: resolution x resolution); raises Skip."""
    return decode_image(data, resolution, rng, max_pixels, min_size, buckets)[0]


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of a JPEG as displayed, from its EXIF orientation (read from the header, before the scan:
    orientations 5 to 8 turn it a quarter)."""
    w, h = img.size
    return (h, w) if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)


def decode_image(
    data: bytes | None, resolution: int, rng: random.Random | None = None, max_pixels: int = 64_000_000,
    min_size: int = 0, buckets: tuple[Bucket, ...] = (),
) -> tuple[torch.Tensor, tuple[float, float, float, float]]:  # fmt: skip
    """`image_tensor` and the crop it took, as fractions of the decoded image (left, top, right, bottom). The
    image goes to the bucket nearest its aspect ratio as displayed (EXIF orientation applied); the tensor's
    shape says which."""
    img = open_image(data, max_pixels, min_size)
    table = buckets or (Bucket(resolution, resolution),)
    try:
        bucket = table[0] if len(table) == 1 else None
        if img.format == "JPEG":
            w, h = img.size if bucket else oriented_size(img)
            bucket = bucket or nearest_bucket(table, h, w)
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the bucket (large speed-up).
            scale = max(bucket.height / h, bucket.width / w)
            img.draft(None, (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))))
        img.load()
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation != 1:
            from PIL import ImageOps

            img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        w, h = img.size
        bucket = bucket or nearest_bucket(table, h, w)
        box = crop_box(img.size, rng, bucket)
        return to_tensor(resize_crop(img, bucket, box=box)), (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
    except Skip:
        raise
    except Exception as err:  # noqa: BLE001 - truncated/corrupt pixel data surfaces only at load
        raise Skip("undecodable", f"{type(err).__name__}: {err}") from None


def image_bytes(record: Record, columnar: bool, image_column: str) -> Any:
    """The undecoded image of a record: its data.image_column (rows), else its first image member."""
    f = record.fields
    if columnar:
        image = f.get(image_column)
        return image.get("bytes") if isinstance(image, dict) else image  # HF's Image feature: {"bytes", "path"}
    return next((f[e] for e in IMAGE_EXTENSIONS if e in f), None)


def record_parts(record: Record, columnar: bool, opts: DecodeOptions,
                 repaired: Counter) -> tuple[bytes | None, str, Any]:  # fmt: skip
    """(image bytes, caption, metadata). Members (tars): the caption from .txt, else the json field named
    data.caption_column (img2dataset writes `caption`; GRIT-style sets may use another). Rows: that column,
    and the metadata is the row without its image."""
    f = record.fields
    if columnar:
        metadata: Any = {k: v for k, v in f.items() if k != opts.image_column}
        caption = caption_text(f.get(opts.caption_column), repaired)
    else:
        metadata = json_metadata(f, repaired)
        caption = caption_text(f.get("txt"), repaired)
        if caption is None and isinstance(metadata, dict):
            caption = caption_text(metadata.get(opts.caption_column), repaired)
    if caption is None:
        raise Skip("no_caption")
    return image_bytes(record, columnar, opts.image_column), caption, metadata


@dataclass(frozen=True)
class DecodeOptions:
    """What image decoding needs from the config (`data.*`, the top resolution and the bucket table)."""

    resolution: int
    min_size: int = 0
    max_pixels: int = 64_000_000
    caption_column: str = "caption"
    image_column: str = "image"
    buckets: tuple[Bucket, ...] = ()  # data.buckets' table; empty: resolution x resolution

    @classmethod
    def from_config(cls, cfg) -> DecodeOptions:
        d = cfg.data
        return cls(cfg.resolution, cfg.min_image_side(), d.max_pixels, d.caption_column, d.image_column,
                   tuple(bucket_table(cfg)))  # fmt: skip


def decode_record(decoder: Decoder, record: Record, columnar: bool, repaired: Counter,
                  rng: random.Random | None = None, epoch: int = 0) -> Sample:  # fmt: skip
    """`decoder.decode`, with any exception it raises on the record's bytes turned into Skip("undecodable")
    naming the exception's class (logged once per class and process, so that a kit bug is seen too)."""
    try:
        return decoder.decode(record, columnar, repaired, rng, epoch)
    except Skip:
        raise
    except Exception as err:  # noqa: BLE001 - hostile bytes reach code paths no list of exceptions covers
        name = type(err).__name__
        if name not in _REPORTED:
            _REPORTED.add(name)
            log.warning("skipping %s (%s): the decoder raised %s: %.200s (counted as undecodable; said once per "
                        "exception class)", record.key, record.shard, name, err)  # fmt: skip
        raise Skip("undecodable", f"{name}: {err}") from None


_REPORTED: set[str] = set()


class Decoder(Protocol):
    """Record -> Sample for one stream (picklable: DataLoader workers receive it). `latents`: whether its
    samples hold model-space latents (precomputed shards) rather than pixels."""

    latents: ClassVar[bool]

    def decode(self, record: Record, columnar: bool, repaired: Counter, rng: random.Random | None = None,
               epoch: int = 0) -> Sample: ...  # fmt: skip


@dataclass(frozen=True)
class ImageDecoder:
    """Image shards: decode, nearest bucket, crop (random with `rng`, else centred), resize, scale to [-1, 1]."""

    options: DecodeOptions
    latents: ClassVar[bool] = False

    def decode(self, record: Record, columnar: bool, repaired: Counter, rng: random.Random | None = None,
               epoch: int = 0) -> Sample:  # fmt: skip
        """A usable sample, or Skip; repairs count only for samples that are kept."""
        opts, fixes = self.options, Counter()
        image, caption, metadata = record_parts(record, columnar, opts, fixes)
        pixels, crop = decode_image(image, opts.resolution, rng, opts.max_pixels, opts.min_size, opts.buckets)
        repaired.update(fixes)
        return Sample(record.key, pixels, caption, metadata, epoch, crop, size=tuple(pixels.shape[-2:]))
