"""Reading configs: YAML files composed through `base:`, the dataclass defaults, dotlist overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from .schema import NamiConfig
from .validation import validate

# Keys that were renamed: a config that still sets the old name gets one line naming the new one.
RENAMED = {"sampler.cfg": "sampler.guidance"}


def _read_yaml(path: Path, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(key, f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(where, f"not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping")
    return data


def _compose(path: Path, key: str = "config", seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read `path` and, first, the chain of files named by its `base:` (relative to the file)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError("base", f"cycle through {path}")
    data = _read_yaml(path, key)
    base = data.pop("base", None)
    layers = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError("base", f"must be a file name, got {base!r} in {path}")
        layers.append(_compose(path.parent / base, "base", seen + (path,)))
    layers.append(OmegaConf.create(data))
    return OmegaConf.merge(*layers) if len(layers) > 1 else layers[0]


def _omegaconf_error(err: OmegaConfBaseException) -> ConfigError:
    key = getattr(err, "full_key", None) or "config"
    message = str(getattr(err, "msg", err)).splitlines()[0]
    if type(err).__name__ == "ConfigKeyError":
        message = f"renamed to {RENAMED[key]}" if key in RENAMED else f"unknown key ({message})"
    return ConfigError(key, message)


def load(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), under: dict[str, Any] | None = None
) -> NamiConfig:
    """Compose defaults <- `under` <- base chain <- file <- overrides, validate, and return a `NamiConfig`.

    `under` is a plain-dict config the file and overrides layer over (a model directory's config.json)."""
    schema = OmegaConf.structured(NamiConfig)
    layers = [schema]
    if under is not None:
        layers.append(OmegaConf.create(under))
    if path is not None:
        layers.append(_compose(Path(path)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like key=value")
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err) from None
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> NamiConfig:
    """A validated `NamiConfig` from its plain-dict form (`to_dict`), e.g. a checkpoint's hyperparameters."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(NamiConfig), OmegaConf.create(data)))
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err) from None
    validate(cfg)
    return cfg


def to_dict(cfg: NamiConfig) -> dict[str, Any]:
    """Plain-dict view (for hparams, logs and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
