"""Where a model path of the config points: a local folder, or a Hugging Face repository id.

`text_encoder.path`, `text_encoder.pooled_path` and `autoencoder.path` take either. `weights/mt5` is both a
relative folder and a valid repository id, so a folder that is not there reached the libraries as a hub id
and came back as "couldn't connect to huggingface.co" (offline) or a 404: the loaders call `local_folder`
first, and a path meant as a folder that does not exist is one line naming the key and the path.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def meant_local(path: str) -> bool:
    """Whether `path` names a local folder rather than a hub repository: it exists; or it is absolute or starts
    with `.` or `~`; or it is no valid repository id (`weights/mclip/clip_text_encoder`: two slashes); or its
    first component is a folder here (`weights/mt5` beside a `weights/` folder)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    candidate = Path(path).expanduser()
    if candidate.exists() or candidate.is_absolute() or path.startswith((".", "~")):
        return True
    try:
        validate_repo_id(path)
    except HFValidationError:
        return True
    return Path(candidate.parts[0]).is_dir()


def local_folder(path: str, key: str) -> Path | None:
    """The local folder `path` names (a `ConfigError` naming `key` and the path if it is not a folder), or None
    when `path` is a hub repository id (left to the library, which loads it from the cache when offline)."""
    if not meant_local(path):
        return None
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ConfigError(key, f"{path} does not exist (a local model folder, or a Hugging Face repository id)")
    if not folder.is_dir():
        raise ConfigError(key, f"{path} is a file; a model folder is expected (its config.json and weights)")
    return folder
