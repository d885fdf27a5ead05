"""`nami export` and the end of every training run: a run's newest EMA weights -> a model directory.

The weights are the run's newest: weights.safetensors or its newest step checkpoint, whichever holds the later
step. The bridge is the one in the run's checkpoints (what training actually used; frozen, so every checkpoint
holds the same), else the fitted one the config points at. Eval scores, when the run evaluated during
training, are read back from its TensorBoard events (eval/*, at the latest evaluated step up to the
exported one).

Without --out the directory is a new numbered one, RUN/export/0001, 0002, ... (as samples are numbered), unless
the newest of them already holds exactly these weights: a resumed run that trained no further step, or a
second `nami export`, does not copy a model again. With --out the directory must be new or empty.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

from ..bridges import BridgeFlow, bridge_from_config, load_bridges
from ..config import ConfigError, NamiConfig, to_dict
from . import layout
from .files import load_torch_file, load_weights_into, numbered_directory, read_dcp_tensors
from .model_dir import (
    config_json,
    is_model_dir,
    model_dir_config,
    read_config_json,
    write_lora_model_dir,
    write_model_dir,
)
from .run_dir import RunDir
from .weights import fitted_bridge, read_weights


@dataclass
class Export:
    path: Path
    step: int | None
    written: bool  # False: the newest export already held exactly these weights


def _checkpoint_bridge_state(path: Path) -> dict[str, torch.Tensor]:
    """The "bridge." tensors of a Lightning checkpoint (a file, or an FSDP directory), prefix removed; the EMA's
    ("ema.bridge.") where the run trained the bridge (trainer.trainable)."""
    if path.is_dir():
        found = read_dcp_tensors(path, lambda fqn: fqn.startswith(("state_dict.bridge.", "state_dict.ema.bridge.")),
                                 "RUN")  # fmt: skip
        state = {k[len("state_dict.") :]: v for k, v in found.items()}
    else:
        state = load_torch_file(path, "RUN").get("state_dict") or {}
    own = {k[len("bridge.") :]: v for k, v in state.items() if k.startswith("bridge.")}
    ema = {k[len("ema.bridge.") :]: v for k, v in state.items() if k.startswith("ema.bridge.")}
    return {**own, **ema}


def run_bridge(cfg: NamiConfig, run: RunDir, weights_file: Path) -> BridgeFlow:
    """The bridge the run trained with: from its checkpoint (the exported one, else the newest), else the fitted
    bridge the config points at (bridge.weights, or RUN/bridges.safetensors)."""
    bridge = bridge_from_config(cfg)
    if not bridge.learnable:
        return bridge
    checkpoints = [p for _, p in run.step_checkpoints()]
    source = weights_file if weights_file.suffix != ".safetensors" else (checkpoints[-1] if checkpoints else None)
    state = _checkpoint_bridge_state(source) if source is not None else {}
    if not state:
        return fitted_bridge(cfg, run.path)
    load_weights_into(bridge, state, source, "bridge", key="RUN")
    return bridge


def eval_scores(run_dir: Path, step: int | None) -> dict | None:
    """{"step", "scores"} of the latest eval/* scalars in RUN/tb at or before `step` (None: none logged)."""
    files = sorted((run_dir / layout.TENSORBOARD).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[int, dict[str, float]] = {}
    for path in files:  # later files win: a resumed run rewrites its steps
        events = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith("eval/"):
                for event in events.Scalars(tag):
                    found.setdefault(event.step, {})[tag[len("eval/") :]] = float(event.value)
    steps = [s for s in found if step is None or s <= step]
    if not steps:
        return None
    latest = max(steps)
    scores = dict(sorted(found[latest].items(), key=lambda item: (item[0] != "overall", item[0])))
    return {"step": latest, "scores": scores}


def _holds_same_weights(directory: Path, weights: dict[str, torch.Tensor]) -> bool:
    """Whether the model directory holds exactly `weights` (a LoRA run's: its adapter file, keys as PEFT saves
    them)."""
    adapter = directory / layout.ADAPTER_WEIGHTS
    with safe_open(str(adapter if adapter.is_file() else directory / layout.MODEL_WEIGHTS), framework="pt") as handle:
        if set(handle.keys()) != set(weights):
            return False
        return all(torch.equal(handle.get_tensor(k), t.detach().float().cpu()) for k, t in weights.items())


def newest_export(run: RunDir) -> Path | None:
    """RUN/export/NNNN with the highest number that is a model directory."""
    numbered = [p for p in run.exports.glob("[0-9]*") if p.name.isdigit() and is_model_dir(p)]
    return max(numbered, key=lambda p: int(p.name)) if numbered else None


def export_run(source: str | Path, out: str | Path | None = None, cfg: NamiConfig | None = None,
               bridge: BridgeFlow | None = None) -> Export:  # fmt: skip
    """Write the model directory of a run (a run directory, or one of its checkpoints / weights files).
    `cfg` and `bridge` default to the run's recorded config and the bridge it trained with."""
    if not Path(source).exists():
        raise ConfigError("RUN", f"not found: {source}")
    weights = read_weights(source, "RUN")
    run = RunDir(weights.directory)
    if cfg is None:  # the config the run recorded, or the model directory's own
        cfg = model_dir_config(run.path, key="RUN") if is_model_dir(run.path) else run.config()
    step = weights.step
    if out is None:
        previous = newest_export(run)
        tensors = _adapter_file_state(weights.adapter) if weights.adapter else weights.tensors
        if previous is not None and read_config_json(previous).get("_training", {}).get("step") == step \
                and _holds_same_weights(previous, tensors):  # fmt: skip
            return Export(previous, step, written=False)
    bridge = bridge if bridge is not None else run_bridge(cfg, run, weights.source)
    try:
        source_name = str(weights.source.resolve().relative_to(run.path.resolve()))
    except ValueError:
        source_name = str(weights.source)
    training = {"step": step, "source": source_name, "eval": eval_scores(run.path, step), "config": to_dict(cfg)}
    target = Path(out) if out is not None else numbered_directory(run.exports)
    if weights.adapter:  # a LoRA run: its adapter beside a reference to the base it was trained on
        write_lora_model_dir(target, config_json(cfg, training), _adapter_file_state(weights.adapter),
                             _adapter_spec(cfg).peft_config(), lora_run_base(cfg, run), bridge, key="--out")  # fmt: skip
    else:
        write_model_dir(target, config_json(cfg, training), weights.tensors, bridge, key="--out")
    return Export(target, step, written=True)


def _adapter_file_state(adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`Weights.adapter` ("model.<module>.lora_A.weight") as the adapter file holds it (no "model." prefix)."""
    return {k[len("model.") :]: v for k, v in adapter.items()}


def _adapter_spec(cfg: NamiConfig):
    """The run's adapter: finetune.lora over the modules of the config's model (built on the meta device)."""
    from ..models import build_model
    from ..models.lora import AdapterSpec

    with torch.device("meta"):
        model = build_model(cfg)
    return AdapterSpec.from_config(cfg.finetune.lora, cfg.model, model)


def lora_run_base(cfg: NamiConfig, run: RunDir) -> Path:
    """The base model a LoRA run trained on (its trainer.init_from), as an absolute path so the adapter's reference
    holds from any working directory."""
    if not cfg.trainer.init_from:
        raise ConfigError("RUN", f"{run.path} holds a LoRA adapter and its config records no trainer.init_from")
    return Path(cfg.trainer.init_from).resolve()


def export_at_end_of_training(run: RunDir, cfg: NamiConfig, bridge: BridgeFlow) -> Export | None:
    """The runner's export after training (rank 0): RUN/export/NNNN. A failure here is reported, not raised:
    the run itself (checkpoints, weights.safetensors) is complete and `nami export` can be run again."""
    try:
        return export_run(run.path, cfg=cfg, bridge=bridge)
    except (ConfigError, OSError) as err:
        print(f"nami: warning: the run finished but its model directory was not written ({err}); "
              f"run `nami export {run.path}`", file=sys.stderr)  # fmt: skip
        return None


def export_merged(source: str | Path, out: str | Path | None = None) -> Export:
    """`nami export SOURCE --merge-lora`: a LoRA run's model directory (adapter files over the base model its
    adapter_config.json names) -> a plain model directory, the adapter written into the MM-DiT's weights (at
    scale 1). The text encoder's tensors, the bridge and the sampler settings come over unchanged."""
    from ..models import build_model
    from ..models.lora import AdapterSpec, add_adapter, merged_state_dict
    from .files import load_weights_into
    from .lora import read_adapter
    from .weights import is_lora_dir

    source = Path(source)
    if not is_lora_dir(source):
        if source.is_dir() and (source / "export").is_dir():  # a LoRA run: its newest model directory
            newest = newest_export(RunDir(source))
            if newest is not None and is_lora_dir(newest):
                return export_merged(newest, out)
        raise ConfigError("RUN", f"{source} is not a LoRA run or a LoRA model directory (adapter_model.safetensors "
                                 "+ adapter_config.json beside config.json): nothing to merge")  # fmt: skip
    cfg = model_dir_config(source, key="RUN")
    adapter = read_adapter(source, "RUN")
    if not adapter.base or not Path(adapter.base).exists():
        raise ConfigError("RUN", f"the adapter in {source} was trained on {adapter.base!r}, which is not here")
    base = read_weights(adapter.base, "RUN")
    model = build_model(cfg)
    load_weights_into(model, base.part("model"), base.source, "model", key="RUN")
    add_adapter(model, AdapterSpec.from_peft(adapter.config, model), "merged", adapter.state, key="RUN")
    weights = {**base.tensors, **{f"model.{k}": v for k, v in merged_state_dict(model).items()}}
    plain = replace(cfg, finetune=replace(cfg.finetune, lora=replace(cfg.finetune.lora, rank=0)))
    bridge = load_bridges(bridge_from_config(plain), source / layout.BRIDGES, "RUN")
    training = {**read_config_json(source).get("_training", {}), "merged_lora": str(source), "base": str(adapter.base)}
    target = Path(out) if out is not None else numbered_directory(source.parent if source.parent.name == "export"
                                                                  else source / "merged")  # fmt: skip
    write_model_dir(target, config_json(plain, training), weights, bridge, key="--out")
    return Export(target, training.get("step"), written=True)
