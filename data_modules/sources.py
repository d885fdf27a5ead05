"""Where samples come from: `data.shards` (paths, globs, brace ranges, directories or fsspec URLs) resolved to
an ordered list of shards, each with its format. With `data.format: hf` the entries name datasets instead,
and their shards are those `datasets` splits them into (`hf.py`); `resolve_data` takes either from the config.

Resolution happens before any compute: a pattern that matches nothing is a `ConfigError` naming it, so the
CLI prints one line and exits 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

import fsspec
from braceexpand import braceexpand
from fsspec.core import url_to_fs

from nami.config import ConfigError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet", ".pq")
FORMATS = ("webdataset", "parquet", "hf")  # hf: datasets read by Hugging Face `datasets` (hf.py)


@dataclass(frozen=True)
class Shard:
    """One input file: its URL (a plain path when local) and its format (`webdataset` or `parquet`). For `hf`,
    shard number `part` of the dataset `origin` (an `hf.HfDataset`), and `url` names it."""

    url: str
    format: str
    part: int = 0
    origin: Any = None


def shard_patterns(spec: Any) -> list[str]:
    """`data.shards` as a list of patterns (a single string is one pattern)."""
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not all(isinstance(p, str) and p for p in spec):
        raise ConfigError("data.shards", f"must be a path, glob or URL, or a list of them; got {spec!r}")
    if not spec:
        raise ConfigError(
            "data.shards",
            "is empty; write shards with `nami data synth --out DIR` and pass data.shards='DIR/*.tar'",
        )
    return list(spec)


def detect_format(url: str, fmt: str = "auto") -> str:
    """The shard's format: `fmt` when it is explicit, else from the file name."""
    if fmt != "auto":
        return fmt
    name = url.lower().split("?", 1)[0]
    if name.endswith(TAR_SUFFIXES):
        return "webdataset"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ConfigError("data.format", f"cannot tell the format of {url} from its name; set data.format")


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _expand(pattern: str, fmt: str) -> list[str]:
    """Every file one pattern names, sorted; a directory stands for the shards directly inside it."""
    fs, path = url_to_fs(pattern)
    # detail=True: one listing gives the types, instead of one request per file on object stores
    if _has_magic(path):
        found = sorted(p for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file")
    elif fs.isdir(path):
        wanted = {"webdataset": TAR_SUFFIXES, "parquet": PARQUET_SUFFIXES}.get(
            fmt, TAR_SUFFIXES + PARQUET_SUFFIXES
        )
        listing = fs.ls(path, detail=True)
        found = sorted(
            i["name"] for i in listing if i.get("type") == "file" and i["name"].lower().endswith(wanted)
        )
    else:
        found = [path] if fs.isfile(path) else []
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return [p if local else fs.unstrip_protocol(p) for p in found]


# fsspec protocol -> the package that implements it (fsspec names it in its ImportError, not how to get it)
DRIVERS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "hf": "huggingface_hub"}


def _listing(pattern: str, fmt: str) -> list[str]:
    """`_expand`, with a missing fsspec driver or an unreachable store as one ConfigError line."""
    try:
        return _expand(pattern, fmt)
    except ImportError as err:
        protocol = pattern.split("://", 1)[0] if "://" in pattern else "file"
        package = DRIVERS.get(protocol, f"the fsspec driver for {protocol}://")
        raise ConfigError("data.shards", f"{pattern}: {str(err).splitlines()[0]} (pip install {package})") from None
    except Exception as err:  # noqa: BLE001 - network and store errors come in many types; all mean "cannot list"
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError("data.shards", f"cannot list {pattern} ({type(err).__name__}: {detail})") from None


def resolve_data(data) -> list[Shard]:
    """The shards the `data` section of a config names, in reading order (ConfigError naming the key)."""
    if data.format == "hf":
        from .hf import resolve_hf

        return resolve_hf(data.shards, data.hf_split, data.hf_name, data.image_column, data.caption_column)
    return resolve_shards(data.shards, data.format)


def resolve_shards(spec: Any, fmt: str = "auto") -> list[Shard]:
    """Expand `data.shards` into shards, in pattern order then name order, without duplicates."""
    if fmt == "hf":  # datasets, not files; the config's split and columns: resolve_data
        from .hf import resolve_hf

        return resolve_hf(spec)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError("data.format", f"unknown value {fmt!r}; choose one of auto, {', '.join(FORMATS)}")
    urls: list[str] = []
    for pattern in shard_patterns(spec):
        for one in braceexpand(pattern):  # img2dataset-style ranges: {00000..00099}.tar
            found = _listing(one, fmt)
            if not found:
                raise ConfigError("data.shards", f"{one} matches no file")
            urls.extend(found)
    seen: set[str] = set()
    unique = [u for u in urls if not (u in seen or seen.add(u))]
    return [Shard(u, detect_format(u, fmt)) for u in unique]


def open_shard(url: str) -> IO[bytes]:
    """A seekable binary file object for a local path or fsspec URL (the caller closes it)."""
    return fsspec.open(url, "rb").open()
