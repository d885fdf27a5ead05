"""Run directories: one config per directory, recorded when the directory is made.

`nami pretrain-bridge` and `nami train` write into runs/<name>/. A second run with the same name but another
model, flow, bridge, text encoder, autoencoder or resolution would leave two models' checkpoints side by side
and overwrite the first one's weights, so the directory records the resolved config it was made with
(config.yaml) and a run whose config differs is refused, naming the first differing key, unless
`trainer.run_dir_exists` asks for `new` (the first of name-2, name-3, ... that is free or holds this config)
or `overwrite` (the previous run's outputs are removed first).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, NamiConfig, config_from_dict, to_dict

CONFIG_FILE = "config.yaml"
# What makes two runs the same model (the rest, e.g. trainer.max_steps or data.shards, may change on resume).
IDENTITY_SECTIONS = ("resolution", "model", "flow", "bridge", "text_encoder", "autoencoder")
NOT_IDENTITY = ("bridge.weights", "text_encoder.cache_size", "text_encoder.dtype")
RUN_OUTPUTS = ("checkpoints", "tb", "tb-bridge", "samples", "weights.safetensors", "bridges.safetensors",
               "bridge_report.json", "export", CONFIG_FILE)  # fmt: skip


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def identity(config: dict) -> dict[str, Any]:
    """The keys of a config that define the model a run directory holds."""
    flat = _flat({k: config.get(k) for k in IDENTITY_SECTIONS})
    return {k: v for k, v in flat.items() if k not in NOT_IDENTITY}


def first_difference(recorded: dict, current: dict) -> str | None:
    """The first identity key whose value differs, as `key: recorded -> current`; None if they agree. The
    recorded config is read as a config is loaded (keys that moved since, parameters resolved), when it can be."""
    try:
        recorded = to_dict(config_from_dict(recorded))
    except ConfigError:  # a config this kit no longer reads: compare it as it stands
        pass
    old, new = identity(recorded), identity(current)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}={old.get(key)!r}, this run has {new.get(key)!r}"
    return None


def _is_first_process() -> bool:
    """Global rank 0 (Lightning re-launches the command on every rank; only one of them writes)."""
    return all(int(os.environ.get(var, "0")) == 0 for var in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _recorded(path: Path) -> dict | None:
    file = path / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        return yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(str(file), f"not valid YAML ({str(err).splitlines()[0]})") from None


def _holds_a_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_OUTPUTS)


def claim_run_dir(cfg: NamiConfig) -> Path:
    """The run directory for `cfg` under trainer.default_root_dir, made (and its config recorded) if new."""
    base = Path(cfg.trainer.default_root_dir) / cfg.name
    current = to_dict(cfg)
    policy = cfg.trainer.run_dir_exists
    candidates = [base] if policy != "new" else [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 1000)]
    for path in candidates:
        recorded = _recorded(path)
        if recorded is None and not _holds_a_run(path):
            return _record(path, current)
        if recorded is None:  # made by a kit version that did not record its config: adopt it
            print(f"nami: note: {path} has no {CONFIG_FILE}; recording this run's config there", file=sys.stderr)
            return _record(path, current)
        difference = first_difference(recorded, current)
        if difference is None:
            return path
        if policy == "overwrite":
            _clear(path)
            print(f"nami: note: removed the previous run in {path} ({difference})", file=sys.stderr)
            return _record(path, current)
        if policy == "error":
            raise ConfigError("trainer.run_dir_exists", f"{path} was made with {difference}; use another name=, "
                                                        "or trainer.run_dir_exists=new (or overwrite)")  # fmt: skip
    raise ConfigError("trainer.run_dir_exists", f"no free run directory next to {base}")


def _record(path: Path, config: dict) -> Path:
    if _is_first_process():
        path.mkdir(parents=True, exist_ok=True)
        partial = path / f".{CONFIG_FILE}.partial"
        partial.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(partial, path / CONFIG_FILE)
    return path


def _clear(path: Path) -> None:
    if not _is_first_process():
        return
    for name in RUN_OUTPUTS:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for keys in path.glob("keys-rank*.jsonl"):
        keys.unlink()
