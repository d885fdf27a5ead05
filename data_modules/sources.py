"""Files named by `data.shards`: paths, globs, brace ranges, directories or fsspec URLs, expanded to an ordered
list of files; and how a file is opened. The formats that read files (`formats/`) resolve through here.

Resolution happens before any compute: a pattern that matches nothing is a `ConfigError` naming it, so the
CLI prints one line and exits 2.
"""

from __future__ import annotations

from typing import IO, Any

import fsspec
from braceexpand import braceexpand
from fsspec.core import url_to_fs

from nami.config import ConfigError

# fsspec protocol -> the package that implements it (fsspec names it in its ImportError, not how to get it)
DRIVERS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "hf": "huggingface_hub"}


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


def list_files(spec: Any, suffixes: tuple[str, ...]) -> list[str]:
    """Every file `data.shards` names, in pattern order then name order, without duplicates. A glob or a path
    names files whatever their names; a directory stands for the files directly inside it whose names end
    with one of `suffixes`."""
    urls: list[str] = []
    for pattern in shard_patterns(spec):
        for one in braceexpand(pattern):  # img2dataset-style ranges: {00000..00099}.tar
            found = _listing(one, suffixes)
            if not found:
                raise ConfigError("data.shards", f"{one} matches no file")
            urls.extend(found)
    seen: set[str] = set()
    return [u for u in urls if not (u in seen or seen.add(u))]


def has_suffix(url: str, suffixes: tuple[str, ...]) -> bool:
    """Whether the file name of `url` (query string aside) ends with one of `suffixes`, case-insensitively."""
    return bool(suffixes) and url.lower().split("?", 1)[0].endswith(suffixes)


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _expand(pattern: str, suffixes: tuple[str, ...]) -> list[str]:
    """Every file one pattern names, sorted."""
    fs, path = url_to_fs(pattern)
    # detail=True: one listing gives the types, instead of one request per file on object stores
    if _has_magic(path):
        found = sorted(p for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file")
    elif fs.isdir(path):
        listing = fs.ls(path, detail=True)
        found = sorted(i["name"] for i in listing if i.get("type") == "file" and has_suffix(i["name"], suffixes))
    else:
        found = [path] if fs.isfile(path) else []
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return [p if local else fs.unstrip_protocol(p) for p in found]


def _listing(pattern: str, suffixes: tuple[str, ...]) -> list[str]:
    """`_expand`, with a missing fsspec driver or an unreachable store as one ConfigError line."""
    try:
        return _expand(pattern, suffixes)
    except ImportError as err:
        protocol = pattern.split("://", 1)[0] if "://" in pattern else "file"
        package = DRIVERS.get(protocol, f"the fsspec driver for {protocol}://")
        raise ConfigError("data.shards", f"{pattern}: {str(err).splitlines()[0]} (pip install {package})") from None
    except Exception as err:  # noqa: BLE001 - network and store errors come in many types; all mean "cannot list"
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError("data.shards", f"cannot list {pattern} ({type(err).__name__}: {detail})") from None


def open_shard(url: str) -> IO[bytes]:
    """A seekable binary file object for a local path or fsspec URL (the caller closes it)."""
    return fsspec.open(url, "rb").open()
