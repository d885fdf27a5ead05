"""Which weights a path stands for, and reading them: the one rule behind `--ckpt`, `trainer.init_from`,
`nami export` and `nami convert official --reverse`.

A path may be
- a model directory (config.json + model.safetensors): its model.safetensors;
- a run directory (or a directory `nami convert official` wrote before model directories existed): whichever of
  weights.safetensors and its newest step checkpoint holds the later step (weights.safetensors on a tie), so a
  resumed run's newer checkpoints are never shadowed by an older weights file;
- a weights file (.safetensors), a Lightning checkpoint (.ckpt) or an FSDP checkpoint directory: itself.

Lightning checkpoints give complete weights by one rule: the EMA tensors over the checkpoint's own network tensors
(the EMA covers exactly what trained), over the `trainer.init_from` weights recorded in the run directory's
config.yaml for the frozen base tensors a checkpoint leaves out (it names them under BASE_FROM_INIT). A LoRA run's
checkpoints and weights.safetensors hold its adapters alone: read back, `Weights.tensors` is the plain base
(trainer.init_from's) and `Weights.adapter` the adapter (the EMA's). Every file is read as data (`files.py`).
"""

from __future__ import annotations

import re
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open

from ..config import ConfigError, NamiConfig
from ..models.lora import plain_name, split_adapter
from .files import load_safetensors, load_torch_file, load_weights_into, read_dcp_metadata, read_dcp_tensors
from .layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BRIDGES, CHECKPOINTS, MODEL_CONFIG, MODEL_WEIGHTS, RUN_CONFIG, RUN_WEIGHTS

CHECKPOINT_NAME = re.compile(r"^step(\d+)\.ckpt$")
NETWORKS = ("model.", "text_encoder.")  # the prefixes of the tensors a weights file holds
# A checkpoint's top-level entry listing the frozen base tensors it leaves out because trainer.init_from provides
# them (JointFlowModule.checkpoint_omits); FSDP checkpoints keep it in their meta.pt.
BASE_FROM_INIT = "nami_base_from_init"
DCP_META = "meta.pt"  # Lightning's file of an FSDP checkpoint's non-tensor entries


def checkpoint_name(step: int) -> str:
    return f"step{step:08d}.ckpt"


def step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete step checkpoints in `folder`, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("step*.ckpt") if (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found)


def weights_step(path: Path) -> int | None:
    """The training step a weights file or step checkpoint holds (safetensors metadata, or the file's name)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                step = (handle.metadata() or {}).get("step")
        except (SafetensorError, OSError):
            return None
        return int(step) if step is not None and step.isascii() and step.isdigit() else None
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def is_lora_dir(path: str | Path) -> bool:
    """A LoRA run's model directory: config.json and an adapter (over the base model its adapter_config.json
    names) instead of model.safetensors."""
    path = Path(path)
    return ((path / MODEL_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()
            and (path / ADAPTER_CONFIG).is_file() and not (path / MODEL_WEIGHTS).is_file())  # fmt: skip


def is_model_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / MODEL_CONFIG).is_file() and ((path / MODEL_WEIGHTS).is_file() or is_lora_dir(path))


def weights_home(path: str | Path, key: str = "--ckpt") -> Path:
    """The run or model directory the weights `path` stands for belong to (where their samples go)."""
    return Path(path) if is_lora_dir(path) else owner_directory(weights_source(path, key))


def weights_source(path: str | Path, key: str = "--ckpt") -> Path:
    """The file (or FSDP checkpoint directory) holding the weights `path` stands for (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(key, f"not found: {path}")
    if not path.is_dir() or (path / ".metadata").exists():
        return path
    if is_lora_dir(path):
        raise ConfigError(key, f"{path} holds a LoRA adapter, not a model: sample it with `--ckpt {path}` or "
                               f"`--ckpt BASE --lora {path}`, or write a plain model with `nami export {path} "
                               "--merge-lora`")  # fmt: skip
    if is_model_dir(path):
        return path / MODEL_WEIGHTS
    candidates = [(step, 1, p) for step, p in step_checkpoints(path / CHECKPOINTS)]
    if (path / RUN_WEIGHTS).is_file():
        candidates.append((weights_step(path / RUN_WEIGHTS) or -1, 2, path / RUN_WEIGHTS))
    if not candidates:
        raise ConfigError(key, f"{path} holds no weights: neither {MODEL_WEIGHTS} (a model directory), "
                               f"{RUN_WEIGHTS} nor {CHECKPOINTS}/step*.ckpt (a run directory)")  # fmt: skip
    return max(candidates)[2]


def owner_directory(source: Path) -> Path:
    """The run or model directory a weights source belongs to (bridges and config live there)."""
    return source.parent.parent if source.parent.name == CHECKPOINTS else source.parent


@dataclass
class Weights:
    """A flat state dict ("model.", and "text_encoder." when it trained) and where it came from."""

    tensors: dict[str, torch.Tensor]
    source: Path  # the file (or FSDP directory) read
    directory: Path  # the run or model directory it belongs to
    # a LoRA run's adapter, named as PEFT saves it with the part's prefix ("model.<module>.lora_A.weight"); the
    # tensors are then the plain base it was trained on (trainer.init_from)
    adapter: dict[str, torch.Tensor] = field(default_factory=dict)

    def part(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of one part ("model", "text_encoder"), prefix removed."""
        return {k[len(name) + 1 :]: v for k, v in self.tensors.items() if k.startswith(f"{name}.")}

    @property
    def step(self) -> int | None:
        return weights_step(self.source)


def read_weights(path: str | Path, key: str = "--ckpt") -> Weights:
    """The weights `path` stands for (`weights_source`); a Lightning checkpoint gives complete weights, its EMA
    where it trained (the module docstring's rule), as float32."""
    source = weights_source(path, key)
    directory = owner_directory(source)
    if source.suffix == ".safetensors":
        state, left_out = load_safetensors(source, key), _safetensors_left_out(source)
    elif source.is_dir():
        # the EMA, and of the checkpoint's own network tensors only those the EMA does not cover
        names = {fqn[len("state_dict.") :] for fqn in read_dcp_metadata(source, key).state_dict_metadata
                 if fqn.startswith("state_dict.")}  # fmt: skip
        wanted = {n for n in names if n.startswith("ema.") or (n.startswith(NETWORKS) and "ema." + n not in names)}
        found = read_dcp_tensors(source, lambda fqn: fqn[len("state_dict.") :] in wanted, key)
        state = {fqn[len("state_dict.") :]: t for fqn, t in found.items()}
        meta = source / DCP_META
        left_out = load_torch_file(meta, key).get(BASE_FROM_INIT, []) if meta.is_file() else []
    else:
        checkpoint = load_torch_file(source, key)
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            raise ConfigError(key, f"{source} is a PyTorch file but not a Lightning checkpoint (no state_dict)")
        left_out = checkpoint.get(BASE_FROM_INIT, [])
    ema = {k[len("ema.") :]: v for k, v in state.items() if k.startswith("ema.")}
    tensors = {k: ema.get(k, v) for k, v in state.items() if k.startswith(NETWORKS)}
    tensors.update({k: v for k, v in ema.items() if k.startswith(NETWORKS)})
    if left_out:
        base = _init_from_base(directory, source, left_out, key)
        tensors = {**{k: base[plain_name(k)] for k in left_out}, **tensors}
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    plain, adapter = split_adapter(tensors)  # a LoRA run's: its base and its adapter apart
    return Weights(plain, source, directory, adapter)


def _safetensors_left_out(path: Path) -> list[str]:
    """The frozen base tensors a LoRA run's weights.safetensors leaves out (trainer.init_from provides them), as
    its metadata lists them."""
    with safe_open(str(path), framework="pt") as handle:
        listed = (handle.metadata() or {}).get(BASE_FROM_INIT)
    try:
        names = json.loads(listed) if listed else []
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("--ckpt", f"{path}: its {BASE_FROM_INIT} metadata is not a list of tensor names")
    return names


def _init_from_base(directory: Path, source: Path, left_out: list[str], key: str) -> dict[str, torch.Tensor]:
    """The weights of trainer.init_from as `directory`'s config.yaml records it, holding every name in `left_out`."""
    what = f"{source} leaves out {len(left_out)} frozen base tensors (e.g. {left_out[0]}) that trainer.init_from"
    try:
        recorded = yaml.safe_load((directory / RUN_CONFIG).read_text()) or {}
    except (OSError, yaml.YAMLError):
        recorded = {}
    init_from = (recorded.get("trainer") or {}).get("init_from") if isinstance(recorded, dict) else None
    if not init_from:
        raise ConfigError(key, f"{what} provides, and {directory / RUN_CONFIG} records no trainer.init_from")
    if not Path(init_from).exists():
        raise ConfigError(key, f"{what} provides: {init_from} (from {directory / RUN_CONFIG}) is not found "
                               "(a relative path is read from the current directory)")  # fmt: skip
    base = read_weights(init_from, key).tensors
    missing = [k for k in left_out if plain_name(k) not in base]
    if missing:
        raise ConfigError(key, f"{what} provides, and {init_from} lacks {missing[:3]}")
    return base


def load_parts_weights(weights: Weights, parts: dict[str, torch.nn.Module], key: str = "--ckpt",
                       text_encoder_optional: bool = False) -> None:  # fmt: skip
    """Fill each named part ("model", "text_encoder") from `weights` after checking every name and shape. A
    frozen text encoder is never in training outputs (it comes from its own files); with
    `text_encoder_optional` a trainable one may be absent too (weights converted from the release hold none:
    it starts fresh)."""
    for name, module in parts.items():
        state = weights.part(name)
        if not state and name == "text_encoder" and (text_encoder_optional or not module.trainable):
            continue
        load_weights_into(module, state, weights.source, name, key)


def bridge_weights_path(cfg: NamiConfig, directory: str | Path | None) -> Path | None:
    """Where the fitted bridge of a run or model directory lives: `bridge.weights`, else
    <directory>/bridges.safetensors (None with neither)."""
    if cfg.bridge.weights:
        return Path(cfg.bridge.weights)
    return Path(directory) / BRIDGES if directory is not None else None


def fitted_bridge(cfg: NamiConfig, directory: str | Path | None, schedule=None):
    """The configured bridge (over `schedule`, default the config's) with its fitted weights (kinds without
    weights need none)."""
    from ..bridges import bridge_from_config, load_bridges

    bridge = bridge_from_config(cfg, schedule)
    if not bridge.learnable:
        return bridge
    path = bridge_weights_path(cfg, directory)
    if path is None or not path.is_file():
        where = f" at {path}" if path is not None else ""
        raise ConfigError("bridge.weights", f"no fitted {cfg.bridge.kind} bridge{where}: run `nami pretrain-bridge "
                                            "CONFIG` first (or set bridge.weights=PATH)")  # fmt: skip
    return load_bridges(bridge, path)


# ---- trainer.init_from ---------------------------------------------------------------------------------------
INIT_KEY = "trainer.init_from"


def init_directory(cfg: NamiConfig) -> Path | None:
    """The directory trainer.init_from's weights belong to (its bridge is the default), checked before any data
    or model is touched; None without init_from. Optimizer, step and data position start fresh: this is
    initialisation, not resume (trainer.resume is)."""
    if not cfg.trainer.init_from:
        return None
    return owner_directory(weights_source(cfg.trainer.init_from, INIT_KEY))


def load_initial_weights(module, cfg: NamiConfig) -> None:
    """Fill the module's networks (`module.trainable()`: "model", a learning "text_encoder") from
    trainer.init_from, then restart its EMA from them (nothing without init_from)."""
    if not cfg.trainer.init_from:
        return
    weights = read_weights(cfg.trainer.init_from, INIT_KEY)
    if weights.adapter:
        raise ConfigError(INIT_KEY, f"{weights.source} holds a LoRA run's adapter: start from a plain model (`nami "
                                    "export RUN --merge-lora` writes one)")  # fmt: skip
    parts = dict(module.trainable().items())
    if getattr(module, "adapter", None) is not None:  # a LoRA run's model: the base at its wrapped layers' names
        from ..models.lora import with_adapter_names

        model = with_adapter_names(parts["model"], weights.part("model"))
        others = {k: v for k, v in weights.tensors.items() if not k.startswith("model.")}
        weights = replace(weights, tensors={**others, **{f"model.{k}": v for k, v in model.items()}})
    load_parts_weights(weights, parts, INIT_KEY, text_encoder_optional=True)
    module.restart_ema()
    module.initialised_from = cfg.trainer.init_from
