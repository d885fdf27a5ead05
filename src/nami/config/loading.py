"""Reading configs: YAML files composed through `base:`, the dataclass defaults, dotlist overrides.

A loaded config is resolved: each component's parameter block (`bridge.params`, `flow.density_params`, ...)
holds every parameter of the chosen kind with its value, as the kind parsed it, so a recorded config says
what ran and two configs that build the same thing compare equal.
"""

from __future__ import annotations

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


# Bounds on a YAML file, checked before it is turned into a config: a config is a few KB; a hostile file
# (a billion laughs, a nesting thousands deep, megabytes of text) must cost one line, not minutes or a crash.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # nodes of the document with every alias expanded (OmegaConf copies what aliases share)
MAX_YAML_DEPTH = 64


def _read_yaml(path: Path, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(key, f"config file not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(str(path), f"is {path.stat().st_size:,} bytes; a config is at most {MAX_YAML_BYTES:,}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), f"is not UTF-8 text (byte {err.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_size(node, path)
        data = yaml.SafeLoader(text).construct_document(node) if node is not None else {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(where, f"not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(str(path), f"nests deeper than {MAX_YAML_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping")
    return data


def _check_size(root, path: Path) -> None:
    """Refuse a composed YAML document whose expansion (aliases counted at every use) exceeds MAX_YAML_NODES
    nodes or MAX_YAML_DEPTH levels. Walks the node graph iteratively, memoising shared (aliased) nodes."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    stack = [(root, 0, False)]
    while stack:
        node, depth, expanded = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(str(path), f"nests deeper than {MAX_YAML_DEPTH} levels")
        if id(node) in sizes:
            continue
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if expanded or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise ConfigError(str(path), f"expands to more than {MAX_YAML_NODES:,} values (aliases counted at "
                                             "every use); a config is far smaller")  # fmt: skip
            continue
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def _literal(data: Any) -> Any:
    """Stored data (a checkpoint's, a run's or a model directory's config) made inert: `${...}` in a string stays
    text. Interpolation is resolved only in the YAML files and overrides a person gives, never in files the kit
    reads back (a model directory from elsewhere must not read environment variables such as tokens)."""
    if isinstance(data, dict):
        return {k: _literal(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_literal(v) for v in data]
    return data.replace("${", "\\${") if isinstance(data, str) else data


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
        layers.append(OmegaConf.create(_move_aliases(_literal(under), None, moved)))
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
    if not isinstance(data, dict):
        raise ConfigError("config", f"a stored config is a mapping, not {type(data).__name__}")
    return _build([OmegaConf.create(_move_aliases(_literal(data), None, moved))], moved)


def to_dict(cfg: NamiConfig) -> dict[str, Any]:
    """Plain-dict view (for hparams, logs and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
