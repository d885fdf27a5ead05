"""Precomputed shards (`nami data encode`, written by `encode.py`; data.precomputed): their layout, the decoder
that reads them, and the checks that a directory of them fits the config.

A directory of precomputed shards holds webdataset tars `RRRRR_IIIIII.tar` (rank, index), one record per
sample with three members sharing a base name (a counter: source keys may hold dots or slashes):

    NNNNNNNN.safetensors   latent (C, h, w) at full size, text_states (L, D), text_mask (L,) bool,
                           text_pooled (P,); its header metadata holds the sample's key, the resolution and
                           the crop taken (fractions left, top, right, bottom of the decoded image)
    NNNNNNNN.txt           the caption (UTF-8)
    NNNNNNNN.json          the source sample's metadata (its json, or its parquet row without the image)

and beside them `nami-encode.json` (what encoded them: the resolution and every autoencoder / text encoder key
that changes an output, the world size, the source shards) and `unconditional.safetensors` (the embedding of
the empty prompt, which caption dropout swaps in during training). `encode-progress/rankRRRRR.json` records
each rank's finished shards and stream position (resume; training refuses a directory that is not done).
They are webdataset tars, so the `webdataset` format reads them and the same streaming reader (format ->
decode -> stream -> collate) applies; only the decoder differs: `PrecomputedDecoder` turns a record into a
`Sample` whose `image` is the latent and whose `text` is the stored `TextEmbedding` (one row). The stream
chooses it once, from data.precomputed.
"""

from __future__ import annotations

import json
import posixpath
import random
import struct
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import fsspec
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from nami.config import ConfigError, NamiConfig
from nami.text_embedding import TextEmbedding

from .decode import caption_text, json_metadata
from .formats.webdataset import WebDataset
from .records import Record, Sample, Shard, Skip

# "nami-encoded" is the name the meta file has always carried: directories written before stay readable.
FORMAT, VERSION = "nami-encoded", 1
META_FILE = "nami-encode.json"
UNCONDITIONAL_FILE = "unconditional.safetensors"
PROGRESS_DIR = "encode-progress"
PAYLOAD = "safetensors"  # member extension of the tensors
TEXT_FIELDS = tuple(f.name for f in fields(TextEmbedding))  # stored as text_<field>
# Keys that change what the autoencoder or the text encoder outputs (text_encoder.cache_size does not).
ENCODER_KEYS = ("resolution",) + tuple(f"autoencoder.{k}" for k in (
    "kind", "channels", "downsample", "path", "scaling_factor", "shift_factor")) + tuple(
    f"text_encoder.{k}" for k in ("kind", "dim", "pooled_dim", "max_length", "path", "pooled_path", "dtype",
                                  "encoder_mask", "attention_mask", "pooling", "pooled_max_length"))  # fmt: skip


def encoder_fingerprint(cfg: NamiConfig) -> dict[str, Any]:
    """The config values precomputed shards depend on, by dotted key."""
    out = {}
    for key in ENCODER_KEYS:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value
    return out


def progress_path(root: str, rank: int) -> str:
    return posixpath.join(root, PROGRESS_DIR, f"rank{rank:05d}.json")


# ---- one record -----------------------------------------------------------------------------------------
def payload(latent: torch.Tensor, text: TextEmbedding, key: str, resolution: int,
            crop: tuple[float, ...] | None) -> bytes:  # fmt: skip
    """The safetensors bytes of one sample (`text` one row; the unconditional file: a batch of one)."""
    tensors = {"latent": latent, **{f"text_{k}": getattr(text, k) for k in TEXT_FIELDS}}
    header = {"key": key, "resolution": str(resolution), "crop": json.dumps(list(crop) if crop else None)}
    return save_tensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=header)


def payload_header(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors payload (its JSON header; nothing is executed)."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__", {}) or {}


def payload_text(tensors: dict[str, torch.Tensor]) -> TextEmbedding:
    """The text embedding among a payload's tensors."""
    return TextEmbedding(*(tensors[f"text_{k}"] for k in TEXT_FIELDS))


@dataclass(frozen=True)
class PrecomputedDecoder:
    """A precomputed record -> Sample(image=latent, text=stored embedding), or Skip with the same reasons as
    image records (no payload: missing_image; a payload that does not parse: undecodable). The crop was taken
    when encoding, so `rng` draws nothing; records are always tar members (`columnar` is False)."""

    latents: ClassVar[bool] = True

    def decode(self, record: Record, columnar: bool, repaired: Counter, rng: random.Random | None = None,
               epoch: int = 0) -> Sample:  # fmt: skip
        data = record.fields.get(PAYLOAD)
        if data is None:
            raise Skip("missing_image", f"no .{PAYLOAD} member")
        try:
            tensors, header = load_tensors(data), payload_header(data)
            latent, text = tensors["latent"], payload_text(tensors)
        except Exception as err:  # noqa: BLE001 - a corrupt payload fails in many ways; all mean "skip"
            raise Skip("undecodable", f"{type(err).__name__}: {err}") from None
        fixes: Counter = Counter()  # repairs count only for samples that are kept
        caption = caption_text(record.fields.get("txt"), fixes)
        if caption is None:
            raise Skip("no_caption")
        metadata = json_metadata(record.fields, fixes)
        repaired.update(fixes)
        crop = json.loads(header.get("crop", "null"))
        return Sample(header.get("key", record.key), latent, caption, metadata, epoch,
                      tuple(crop) if crop else None, text)  # fmt: skip


# ---- a directory ----------------------------------------------------------------------------------------
def read_json(url: str) -> dict | None:
    """A JSON file by path or fsspec URL, None when it does not exist."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return None
    with fs.open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def _directories(shards: list[Shard]) -> list[str]:
    return list(dict.fromkeys(posixpath.dirname(s.url) or "." for s in shards))


def check_precomputed(cfg: NamiConfig, shards: list[Shard]) -> None:
    """Refuse, in one ConfigError line, precomputed shards this config cannot train from: not written by
    `nami data encode`, not finished, or encoded with another autoencoder / text encoder / resolution."""
    want = encoder_fingerprint(cfg)
    for shard in shards:
        if shard.format != WebDataset.name:
            raise ConfigError("data.precomputed", f"{shard.url}: precomputed shards are the .tar files of "
                                                  "`nami data encode`")  # fmt: skip
    for root in _directories(shards):
        meta = read_json(posixpath.join(root, META_FILE))
        if meta is None or meta.get("format") != FORMAT:
            raise ConfigError("data.shards", f"{root} has no {META_FILE}: data.precomputed=true reads the output "
                                             "of `nami data encode CONFIG --out DIR`")  # fmt: skip
        for key, value in want.items():
            stored = meta["encoder"].get(key)
            if stored != value:
                raise ConfigError(key, f"is {value!r} but the precomputed shards in {root} were encoded with "
                                       f"{stored!r}; re-encode them or set {key}={stored}")  # fmt: skip
        for rank in range(int(meta["world_size"])):
            progress = read_json(progress_path(root, rank))
            if not progress or not progress.get("done"):
                raise ConfigError("data.shards", f"{root}: encoding is not finished (rank {rank} of "
                                                 f"{meta['world_size']}); run `nami data encode ... --rank {rank}` "
                                                 "again to complete it")  # fmt: skip


def load_unconditional(shards: list[Shard]) -> TextEmbedding:
    """The stored embedding of the empty prompt: states (1, L, D), mask (1, L), pooled (1, P)."""
    root = _directories(shards)[0]
    url = posixpath.join(root, UNCONDITIONAL_FILE)
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise ConfigError("data.shards", f"{root} has no {UNCONDITIONAL_FILE} (written by `nami data encode`)")
    with fs.open(path, "rb") as handle:
        return payload_text(load_tensors(handle.read()))
