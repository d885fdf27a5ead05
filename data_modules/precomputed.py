"""Precomputed shards (`nami data encode`, written by `encode.py`; data.precomputed): their layout and the decoder
that reads them (`precomputed_dir.py` reads and checks a directory of them).

A directory of precomputed shards holds webdataset tars `RRRRR_IIIIII.tar` (rank, index), one record per
sample with three members sharing a base name (a counter: source keys may hold dots or slashes):

    NNNNNNNN.safetensors   latent (C, h, w) at full size, text_states (L, D), text_mask (L,) bool,
                           text_pooled (P,); its header metadata holds the sample's key, the resolution,
                           its aspect-ratio bucket ("HxW" in pixels: the latent is (C, H / f, W / f) for the
                           autoencoder's downsampling f) and the crop taken (fractions left, top, right,
                           bottom of the decoded image)
    NNNNNNNN.txt           the caption (UTF-8)
    NNNNNNNN.json          the source sample's metadata (its json, or its parquet row without the image)

and beside them `nami-encode.json` (what encoded them: the resolution, the bucket table and every autoencoder /
text encoder key that changes an output, the world size, the source shards) and `unconditional.safetensors` (the embedding of
the empty prompt, which caption dropout swaps in during training). `encode-progress/rankRRRRR.json` records
each rank's finished shards and stream position (resume; training refuses a directory that is not done).
They are webdataset tars, so the `webdataset` format reads them and the same streaming reader (format ->
decode -> stream -> collate) applies; only the decoder differs: `PrecomputedDecoder` turns a record into a
`Sample` whose `image` is the latent and whose `text` is the stored `TextEmbedding` (one row), after checking
the payload against the config's `PayloadLayout` (a tampered or damaged one is a counted skip, never a
broken batch). The stream chooses it once, from data.precomputed. Buckets: a latent's shape says its bucket
(`Sample.size`), so the stream batches stored latents per bucket as it batches images; a directory encoded
with another bucket table is refused before training (the table is part of the fingerprint). Directories
written before buckets record none: they are the square at their resolution.
"""

from __future__ import annotations

import json
import posixpath
import random
import re
import struct
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from nami.config import NamiConfig
from nami.config.buckets import Bucket, bucket_table
from nami.text_embedding import TextEmbedding

from .metadata import caption_text, json_metadata
from .records import Record, Sample, Skip

# "nami-encoded" is the name the meta file has always carried: directories written before stay readable.
FORMAT, VERSION = "nami-encoded", 1
META_FILE = "nami-encode.json"
UNCONDITIONAL_FILE = "unconditional.safetensors"
PROGRESS_DIR = "encode-progress"
PAYLOAD = "safetensors"  # member extension of the tensors
SHARD_NAME = re.compile(r"\d{5}_\d{6}\.tar")  # RRRRR_IIIIII.tar
TEXT_FIELDS = tuple(f.name for f in fields(TextEmbedding))  # stored as text_<field>
# Keys that change what the autoencoder or the text encoder outputs (text_encoder.cache_size does not).
ENCODER_KEYS = ("resolution",) + tuple(f"autoencoder.{k}" for k in (
    "kind", "channels", "downsample", "path", "scaling_factor", "shift_factor")) + tuple(
    f"text_encoder.{k}" for k in ("kind", "dim", "pooled_dim", "max_length", "path", "pooled_path", "dtype",
                                  "encoder_mask", "attention_mask", "pooling", "pooled_max_length"))  # fmt: skip


BUCKETS_KEY = "data.buckets"  # in the fingerprint: the table itself, [[height, width], ...] (not square / auto)


def encoder_fingerprint(cfg: NamiConfig) -> dict[str, Any]:
    """The config values precomputed shards depend on, by dotted key, and the bucket table they are stored at."""
    out = {}
    for key in ENCODER_KEYS:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value
    out[BUCKETS_KEY] = [b.as_list() for b in bucket_table(cfg)]
    return out


def recorded_fingerprint(encoder: dict[str, Any]) -> dict[str, Any]:
    """A directory's recorded fingerprint; one written before buckets (no table) holds the square alone."""
    resolution = encoder.get("resolution")
    if BUCKETS_KEY in encoder or not isinstance(resolution, int):
        return encoder
    return {**encoder, BUCKETS_KEY: [[resolution, resolution]]}


def progress_path(root: str, rank: int) -> str:
    return posixpath.join(root, PROGRESS_DIR, f"rank{rank:05d}.json")


# ---- one record -----------------------------------------------------------------------------------------
def payload(latent: torch.Tensor, text: TextEmbedding, key: str, resolution: int,
            crop: tuple[float, ...] | None, size: tuple[int, int] | None = None) -> bytes:  # fmt: skip
    """The safetensors bytes of one sample (`text` one row; the unconditional file: a batch of one) at its
    bucket `size` (height, width in pixels; None: no bucket, the unconditional file)."""
    tensors = {"latent": latent, **{f"text_{k}": getattr(text, k) for k in TEXT_FIELDS}}
    header = {"key": key, "resolution": str(resolution), "crop": json.dumps(list(crop) if crop else None)}
    if size is not None:
        header["bucket"] = Bucket(*size).name
    return save_tensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=header)


def payload_header(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors payload (its JSON header; nothing is executed)."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__", {}) or {}


def payload_text(tensors: dict[str, torch.Tensor]) -> TextEmbedding:
    """The text embedding among a payload's tensors."""
    return TextEmbedding(*(tensors[f"text_{k}"] for k in TEXT_FIELDS))


FLOATS = (torch.float32, torch.float16, torch.bfloat16)  # the storage dtypes `nami data encode` writes


@dataclass(frozen=True)
class PayloadLayout:
    """The tensors a payload must hold for a config: latent (C, h, w) at full size for one of the buckets, text
    states (L, D), mask (L,) bool, pooled (P,), floats finite. The config was checked against the directory's
    nami-encode.json (same resolution, bucket table, autoencoder and text encoder), so its sizes are the
    directory's: a payload that differs was tampered with or damaged, and would break the batch it joined
    (`torch.stack`) or the model."""

    channels: int
    latent_sizes: tuple[tuple[int, int], ...]  # the full-size latent (h, w) of each bucket of data.buckets
    states: tuple[int, int]
    pooled: int
    downsample: int = 1  # autoencoder.downsample: a latent (h, w) is the bucket (h * f, w * f) in pixels

    @classmethod
    def from_config(cls, cfg: NamiConfig) -> PayloadLayout:
        t, down = cfg.text_encoder, cfg.autoencoder.downsample
        sizes = tuple((b.height // down, b.width // down) for b in bucket_table(cfg))
        return cls(cfg.autoencoder.channels, sizes, (t.max_length, t.dim), t.pooled_dim, down)

    def bucket(self, latent: torch.Tensor) -> tuple[int, int]:
        """The bucket (height, width in pixels) a latent of a valid payload is stored at."""
        return latent.shape[-2] * self.downsample, latent.shape[-1] * self.downsample

    def problem(self, tensors: dict[str, torch.Tensor], batch: tuple[int, ...] = ()) -> str | None:
        """What is wrong with a payload's tensors, or None. `batch`: a leading batch shape (the unconditional
        file's (1,)), whose latent is empty."""
        latents = [(0,)] if batch else [(self.channels, h, w) for h, w in self.latent_sizes]  # any bucket's
        want = {"latent": latents, "text_states": [batch + self.states], "text_mask": [batch + self.states[:1]],
                "text_pooled": [batch + (self.pooled,)]}  # fmt: skip
        if set(tensors) != set(want):
            return f"tensors {sorted(tensors)}, expected {sorted(want)}"
        for name, shapes in want.items():
            tensor = tensors[name]
            if tuple(tensor.shape) not in shapes:
                expected = shapes[0] if len(shapes) == 1 else f"one of {shapes} (a bucket's)"
                return f"{name} has shape {tuple(tensor.shape)}, expected {expected}"
            if name == "text_mask":
                if tensor.dtype != torch.bool:
                    return f"text_mask is {tensor.dtype}, expected bool"
            elif tensor.dtype not in FLOATS:
                return f"{name} is {tensor.dtype}, expected one of float32, float16, bfloat16"
            elif not bool(torch.isfinite(tensor).all()):
                return f"{name} holds non-finite values"
        return None


def payload_crop(header: dict[str, str]) -> tuple[float, float, float, float] | None:
    """The crop a payload's header records: None, or fractions (left, top, right, bottom) of the decoded image
    with 0 <= left < right <= 1 and 0 <= top < bottom <= 1; ValueError otherwise."""
    crop = json.loads(header.get("crop", "null"))
    if crop is None:
        return None
    if not (isinstance(crop, list) and len(crop) == 4
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in crop)):  # fmt: skip
        raise ValueError(f"crop {str(crop)[:80]} is not four numbers")
    left, top, right, bottom = (float(x) for x in crop)
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise ValueError(f"crop {crop} is not a box inside the image")
    return left, top, right, bottom


@dataclass(frozen=True)
class PrecomputedDecoder:
    """A precomputed record -> Sample(image=latent, text=stored embedding), or Skip with the same reasons as
    image records (no payload: missing_image; a payload that does not parse: undecodable), and bad_payload for
    one that parses but does not fit `layout` or whose header is wrong: every payload is checked here, before
    it reaches a batch. The latent's shape gives the sample's bucket (and must be the one the header names, when
    it names one). The crop was taken when encoding, so `rng` draws nothing; records are always tar
    members (`columnar` is False)."""

    layout: PayloadLayout
    latents: ClassVar[bool] = True

    def decode(self, record: Record, columnar: bool, repaired: Counter, rng: random.Random | None = None,
               epoch: int = 0) -> Sample:  # fmt: skip
        data = record.fields.get(PAYLOAD)
        if data is None:
            raise Skip("missing_image", f"no .{PAYLOAD} member")
        try:
            tensors, header = load_tensors(data), payload_header(data)
        except Exception as err:  # noqa: BLE001 - a corrupt payload fails in many ways; all mean "skip"
            raise Skip("undecodable", f"{type(err).__name__}: {err}") from None
        problem = self.layout.problem(tensors)
        if problem is None:
            try:
                crop = payload_crop(header)
            except ValueError as err:  # also json's errors
                problem = str(err)
        if problem is None:
            size = self.layout.bucket(tensors["latent"])
            named = header.get("bucket", Bucket(*size).name)  # payloads written before buckets name none
            if named != Bucket(*size).name:
                problem = f"the header names bucket {str(named)[:40]!r} but the latent is {Bucket(*size).name}'s"
        if problem is not None:
            raise Skip("bad_payload", problem)
        fixes: Counter = Counter()  # repairs count only for samples that are kept
        caption = caption_text(record.fields.get("txt"), fixes)
        if caption is None:
            raise Skip("no_caption")
        metadata = json_metadata(record.fields, fixes)
        repaired.update(fixes)
        return Sample(header.get("key", record.key), tensors["latent"], caption, metadata, epoch, crop,
                      payload_text(tensors), size)  # fmt: skip
