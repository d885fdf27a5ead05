"""A directory of precomputed shards (`precomputed.py`): its description files read and checked before any compute.

`nami-encode.json`, the progress files and `unconditional.safetensors` are written by `nami data encode`; one
that is damaged, incomplete or does not fit the config (its autoencoder, text encoder, resolution or bucket table) is one ConfigError line naming the file (under
data.shards when training reads the directory, under --out when an encode resumes into it), never a
traceback. Each is read up to a bound (DESCRIPTION_MAX_BYTES; the unconditional file: data.max_member_bytes).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec
from safetensors.torch import load as load_tensors

from nami.config import ConfigError, NamiConfig
from nami.text_embedding import TextEmbedding

from .formats.base import read_bounded
from .formats.webdataset import WebDataset
from .precomputed import (FORMAT, META_FILE, SHARD_NAME, UNCONDITIONAL_FILE, PayloadLayout, encoder_fingerprint,
                          payload_text, progress_path, recorded_fingerprint)  # fmt: skip
from .records import Shard

DESCRIPTION_MAX_BYTES = 2**20  # nami-encode.json and progress files are a few KB


def read_json(url: str, key: str = "data.shards") -> Any:
    """A JSON file by path or fsspec URL, None when it does not exist; one that cannot be read or parsed (or
    is larger than DESCRIPTION_MAX_BYTES) is a ConfigError under `key` naming the file."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as handle:
            data = read_bounded(handle, DESCRIPTION_MAX_BYTES)
        if data is None:
            raise ValueError(f"larger than {DESCRIPTION_MAX_BYTES} bytes")
        return json.loads(data)
    except Exception as err:  # noqa: BLE001 - OS, Unicode, JSON and recursion errors alike: a damaged file
        raise ConfigError(key, f"{url} is damaged ({type(err).__name__}: {str(err)[:200]}); it is written by "
                               "`nami data encode`, run it again into a fresh --out") from None  # fmt: skip


def _field(data: Any, name: str, kind: type | tuple[type, ...], url: str, key: str) -> Any:
    """`data[name]`, checked to be of `kind`; anything else is a ConfigError naming the file."""
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ConfigError(key, f"{url} is incomplete or damaged: {name!r} is missing or not "
                               f"{getattr(kind, '__name__', kind)}; run `nami data encode` again into a fresh --out")  # fmt: skip
    return value


def read_meta(root: str, key: str = "data.shards") -> dict | None:
    """A directory's nami-encode.json, None when there is none, its sections checked (ConfigError naming it)."""
    url = posixpath.join(root, META_FILE)
    meta = read_json(url, key)
    if meta is None:
        return None
    if _field(meta, "format", str, url, key) != FORMAT:
        raise ConfigError(key, f"{url} is not a {FORMAT} description (format {meta['format']!r})")
    _field(meta, "encoder", dict, url, key)
    _field(meta, "sources", dict, url, key)
    if _field(meta, "world_size", int, url, key) < 1:
        raise ConfigError(key, f"{url} is damaged: world_size {meta['world_size']} < 1")
    return meta


def read_progress(root: str, rank: int, key: str = "data.shards") -> dict | None:
    """Rank `rank`'s progress file, None when there is none, its fields checked (ConfigError naming it)."""
    url = progress_path(root, rank)
    progress = read_json(url, key)
    if progress is None:
        return None
    _field(progress, "done", bool, url, key)
    _field(progress, "next_worker", int, url, key)
    if _field(progress, "num_workers", int, url, key) < 0:
        raise ConfigError(key, f"{url} is damaged: num_workers {progress['num_workers']} < 0")
    for shard in _field(progress, "shards", list, url, key):
        name = _field(shard, "name", str, url, key)
        if not SHARD_NAME.fullmatch(name):
            raise ConfigError(key, f"{url} is damaged: {name[:80]!r} is not a shard name `nami data encode` writes")
        _field(shard, "bytes", int, url, key), _field(shard, "samples", int, url, key)
    for state in _field(progress, "workers", dict, url, key).values():
        for name in ("epoch", "piece", "block", "offset", "batches"):
            if _field(state, name, int, url, key) < 0:
                raise ConfigError(key, f"{url} is damaged: a worker's {name} is negative")
        for name in ("skipped", "repaired"):
            counts = _field(state, name, dict, url, key)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
                raise ConfigError(key, f"{url} is damaged: a worker's {name} counts are not integers")
        pending = state.get("pending", [])  # places of samples waiting for their bucket (stream.WorkerState)
        if not isinstance(pending, list) or not all(
            isinstance(a, list) and len(a) == 4 and all(_whole(x) for x in a) for a in pending
        ):
            raise ConfigError(key, f"{url} is damaged: a worker's pending samples are not [epoch, piece, block, "
                                   "item] places")  # fmt: skip
    return progress


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _directories(shards: list[Shard]) -> list[str]:
    return list(dict.fromkeys(posixpath.dirname(s.url) or "." for s in shards))


def check_precomputed(cfg: NamiConfig, shards: list[Shard]) -> None:
    """Refuse, in one ConfigError line, precomputed shards this config cannot train from: not written by
    `nami data encode`, not finished, encoded with another autoencoder / text encoder / resolution, or with a
    damaged description (nami-encode.json, a progress file, unconditional.safetensors: the line names it)."""
    want = encoder_fingerprint(cfg)
    for shard in shards:
        if shard.format != WebDataset.name:
            raise ConfigError("data.precomputed", f"{shard.url}: precomputed shards are the .tar files of "
                                                  "`nami data encode`")  # fmt: skip
    for root in _directories(shards):
        meta = read_meta(root)
        if meta is None:
            raise ConfigError("data.shards", f"{root} has no {META_FILE}: data.precomputed=true reads the output "
                                             "of `nami data encode CONFIG --out DIR`")  # fmt: skip
        recorded = recorded_fingerprint(meta["encoder"])
        for key, value in want.items():
            stored = recorded.get(key)
            if stored != value:
                raise ConfigError(key, f"is {value!r} but the precomputed shards in {root} were encoded with "
                                       f"{stored!r}; re-encode them or set {key}={stored}")  # fmt: skip
        # Ranks in order, stopping at the first unfinished one (a world_size of 10^9 costs no more).
        for rank in range(meta["world_size"]):
            progress = read_progress(root, rank)
            if not progress or not progress["done"]:
                raise ConfigError("data.shards", f"{root}: encoding is not finished (rank {rank} of "
                                                 f"{meta['world_size']}); run `nami data encode ... --rank {rank}` "
                                                 "again to complete it")  # fmt: skip
        _unconditional(root, cfg)


def _unconditional(root: str, cfg: NamiConfig) -> TextEmbedding:
    """The directory's stored embedding of the empty prompt, checked against the config's layout."""
    url = posixpath.join(root, UNCONDITIONAL_FILE)
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.exists(path):
            raise ConfigError("data.shards", f"{root} has no {UNCONDITIONAL_FILE} (written by `nami data encode`)")
        with fs.open(path, "rb") as handle:
            data = read_bounded(handle, cfg.data.max_member_bytes)
        if data is None:
            raise ValueError("larger than data.max_member_bytes")
        tensors = load_tensors(data)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - not safetensors: any parse error
        raise ConfigError("data.shards", f"{url} is damaged ({type(err).__name__}: {str(err)[:200]}); run "
                                         "`nami data encode` again into a fresh --out") from None  # fmt: skip
    problem = PayloadLayout.from_config(cfg).problem(tensors, batch=(1,))
    if problem:
        raise ConfigError("data.shards", f"{url} does not fit the config: {problem}")
    return payload_text(tensors)


def load_unconditional(cfg: NamiConfig, shards: list[Shard]) -> TextEmbedding:
    """The stored embedding of the empty prompt: states (1, L, D), mask (1, L), pooled (1, P)."""
    return _unconditional(_directories(shards)[0], cfg)
