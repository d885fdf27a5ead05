"""Reading configs: YAML files composed through `base:`, the dataclass defaults, dotlist overrides.

A loaded config is resolved: each component's parameter block (`bridge.params`, `flow.density_params`, ...)
holds every parameter of the chosen kind with its value, as the kind parsed it, so a recorded config says
what ran and two configs that build the same thing compare equal.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import registry
from ..errors import ConfigError
from .schema import NamiConfig
from .validation import validate

# Keys that were renamed: a config that still sets the old name gets one line naming the new one.
RENAMED = {"sampler.cfg": "sampler.guidance"}
# Keys that moved and still work under their old name (old -> new): the value goes to the new key, with a
# one-line note on stderr where a person wrote it (a file or an override; stored configs move silently). A new
# key inside a kind's parameter block applies only to kinds that take that parameter: the old key never
# reached the others (bridge.hidden with conv1x1), so there it is dropped.
ALIASES = {
    "bridge.hidden": "bridge.params.hidden",
    "flow.logit_mean": "flow.density_params.mean",
    "flow.logit_std": "flow.density_params.std",
}


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


def _compose(path: Path, moved: set[str], key: str = "config", seen: tuple[Path, ...] = ()) -> DictConfig:
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
        layers.append(_compose(path.parent / base, moved, "base", seen + (path,)))
    layers.append(OmegaConf.create(_move_aliases(data, str(path), moved)))
    return OmegaConf.merge(*layers) if len(layers) > 1 else layers[0]


def _move_aliases(data: dict[str, Any], where: str | None, moved: set[str]) -> dict[str, Any]:
    """One layer (a file, the overrides, a stored config) with every old key of ALIASES moved to its new key,
    which is added to `moved`; with `where` (the layer's source) each move prints a note."""
    for old, new in ALIASES.items():
        *section, name = old.split(".")
        parent = _mapping_at(data, section)
        if parent is None or name not in parent:
            continue
        value = parent.pop(name)
        *new_section, new_name = new.split(".")
        target = _mapping_at(data, new_section, create=True)
        if target is None:
            raise ConfigError(".".join(new_section), "must be a mapping")
        if new_name in target:
            raise ConfigError(old, f"is the old name of {new}, which {where or 'the config'} sets too; "
                                   f"keep only {new}")  # fmt: skip
        target[new_name] = value
        moved.add(new)
        if where is not None:
            print(f"nami: note: {old} is now {new} (the old name, set in {where}, still works)", file=sys.stderr)
    return data


def _mapping_at(data: dict[str, Any], path: list[str], create: bool = False) -> dict[str, Any] | None:
    """The mapping at the nested `path` of `data` (made with `create`); None where something else is there."""
    for part in path:
        if create and data.get(part) is None:
            data[part] = {}
        data = data.get(part)
        if not isinstance(data, dict):
            return None
    return data


def _drop_untaken(merged: DictConfig, moved: set[str]) -> None:
    """Remove the parameters that reached a kind's block through an old key but that the kind does not take."""
    for new in moved:
        block, name = new.rsplit(".", 1)
        for reg in registry.WITH_PARAMS:
            kind = OmegaConf.select(merged, reg.key) if reg.params_key == block else None
            if isinstance(kind, str) and kind in reg:
                if name not in {f.name for f in dataclasses.fields(reg.params_type(kind))}:
                    del OmegaConf.select(merged, block)[name]


def _resolve_params(cfg: NamiConfig) -> None:
    """Write each component's parameter block back as its kind parsed it: every parameter with its value."""
    for reg in registry.WITH_PARAMS:
        *section, name = reg.params_key.split(".")
        owner = functools.reduce(getattr, section, cfg)
        kind = functools.reduce(getattr, reg.key.split("."), cfg)
        setattr(owner, name, registry.plain_params(reg.params(kind, getattr(owner, name))))


def _build(layers: list[DictConfig], moved: set[str]) -> NamiConfig:
    """Defaults <- `layers`, validated and resolved."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(NamiConfig), *layers)
        _drop_untaken(merged, moved)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err) from None
    validate(cfg)
    _resolve_params(cfg)
    return cfg


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
    moved: set[str] = set()
    layers = []
    if under is not None:
        layers.append(OmegaConf.create(_move_aliases(copy.deepcopy(under), None, moved)))
    if path is not None:
        layers.append(_compose(Path(path), moved))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like key=value")
    if overrides:
        try:
            dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as err:
            raise _omegaconf_error(err) from None
        layers.append(OmegaConf.create(_move_aliases(dotlist, "the overrides", moved)))
    return _build(layers, moved)


def config_from_dict(data: dict[str, Any]) -> NamiConfig:
    """A validated `NamiConfig` from its plain-dict form (`to_dict`), e.g. a checkpoint's hyperparameters (one
    written before a key moved reads too: ALIASES)."""
    moved: set[str] = set()
    return _build([OmegaConf.create(_move_aliases(copy.deepcopy(data), None, moved))], moved)


def to_dict(cfg: NamiConfig) -> dict[str, Any]:
    """Plain-dict view (for hparams, logs and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
