"""`nami convert official`: the released NAMI-2B checkpoint <-> a directory `nami sample --ckpt` reads.

Forward: the release's transformer state dict (diffusers Flux layout, .bin / .pt / .safetensors) and its
bridge_flow.bin become a model directory (`model_dir.py`: config.json, model.safetensors with "model." keys,
bridges.safetensors holding the `scalar_bias` bridge, README.md). Reverse: the weights a kit directory stands
for (`weights.weights_source`: a model directory, a run directory, a weights file or a checkpoint) become
DIR/transformer/pytorch_model_fsdp.bin and DIR/bridge_flow.bin, the file names the release's inference code
loads.

Every key and shape is checked against the config before anything is written; the first fault is one
`ConfigError` line. The key mapping itself is `nami.models.official` (pure, meta-tensor safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..bridges import BridgeFlow, bridge_from_config, load_bridges
from ..config import ConfigError, NamiConfig
from ..models import build_model
from ..models.official import (
    check_keys,
    kit_lora_to_diffusers,
    kit_bridge_to_official,
    kit_to_official,
    official_bridge_to_kit,
    official_to_kit,
)
from . import layout
from .files import load_safetensors, load_torch_file, refuse_nonempty
from .model_dir import config_json, write_model_dir
from .lora import is_adapter_dir, read_adapter
from .weights import read_weights

DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"  # the file name diffusers' load_lora_weights looks for

# What the release's folders hold, in the order a directory given as --transformer is searched.
OFFICIAL_TRANSFORMER_FILES = ("pytorch_model_fsdp.bin", "diffusion_pytorch_model.safetensors",
                              "diffusion_pytorch_model.bin")  # fmt: skip
OFFICIAL_TRANSFORMER = Path("transformer") / "pytorch_model_fsdp.bin"
OFFICIAL_BRIDGE = "bridge_flow.bin"


@dataclass
class ConvertReport:
    parameters: int
    files: list[Path]


def read_tensors(path: str | Path, key: str) -> tuple[dict[str, torch.Tensor], Path]:
    """(flat state dict, the file read) from safetensors or a torch.save archive (weights_only); anything else
    is one line naming the file."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in OFFICIAL_TRANSFORMER_FILES if (path / name).is_file()]
        if not found:
            raise ConfigError(key, f"{path} holds none of {', '.join(OFFICIAL_TRANSFORMER_FILES)}")
        path = found[0]
    if not path.is_file():
        raise ConfigError(key, f"file not found: {path}")
    state = load_safetensors(path, key) if path.suffix == ".safetensors" else load_torch_file(path, key)
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ConfigError(key, f"{path} is not a state dict of tensors ({bad}: {type(state[bad]).__name__})")
    return state, path


def _model_shapes(cfg: NamiConfig) -> dict[str, torch.Tensor]:
    """The configured model's state dict on the meta device: every name and shape, nothing allocated."""
    if not cfg.model.qk_norm:
        raise ConfigError("model.qk_norm", "the official layout has QK RMSNorm; set model.qk_norm=true")
    with torch.device("meta"):
        return build_model(cfg).state_dict()


def _blocks(cfg: NamiConfig) -> tuple[int, int]:
    return cfg.model.double_blocks, cfg.model.single_blocks


def official_transformer_to_kit(cfg: NamiConfig, state: dict, source: str = "--transformer",
                                where: str = "the state dict") -> dict[str, torch.Tensor]:  # fmt: skip
    """The kit's model state dict from an official-layout one, after checking every key and shape against the
    model `cfg` describes (faults name option `source` and file `where`). Works on meta tensors."""
    expected = kit_to_official(_model_shapes(cfg), *_blocks(cfg))
    check_keys(state, expected, source, where, f"the {cfg.name} model")
    return official_to_kit(state, *_blocks(cfg))


def official_bridge(cfg: NamiConfig, state: dict[str, torch.Tensor], source: str = "--bridge",
                    where: str = "the state dict") -> BridgeFlow:  # fmt: skip
    """The config's `scalar_bias` bridge holding the release's scale and shift maps."""
    if cfg.bridge.kind != "scalar_bias":
        raise ConfigError("bridge.kind", f"the official bridge is scalar_bias, not {cfg.bridge.kind}")
    bridge = bridge_from_config(cfg)
    check_keys(state, kit_bridge_to_official(bridge.state_dict()), source, where, f"the {cfg.name} bridge")
    bridge.load_state_dict(official_bridge_to_kit(state))
    return bridge


def convert_official(cfg: NamiConfig, transformer: str | Path, bridge: str | Path,
                     out: str | Path) -> ConvertReport:  # fmt: skip
    """Release checkpoint -> a model directory at `out` (new or empty)."""
    out = Path(out)
    refuse_nonempty(out, "--out")
    state, transformer_file = read_tensors(transformer, "--transformer")
    weights = official_transformer_to_kit(cfg, state, "--transformer", str(transformer_file))
    state, bridge_file = read_tensors(bridge, "--bridge")
    fitted = official_bridge(cfg, state, "--bridge", str(bridge_file))
    training = {"step": None, "source": f"the released NAMI-2B ({transformer_file}, {bridge_file})"}
    write_model_dir(out, config_json(cfg, training), {f"model.{k}": v for k, v in weights.items()}, fitted)
    files = [out / name for name in (layout.MODEL_WEIGHTS, layout.BRIDGES, layout.MODEL_CONFIG, layout.MODEL_CARD)]
    return ConvertReport(sum(v.numel() for v in weights.values()), files)


def convert_to_official(cfg: NamiConfig, weights: str | Path, bridge: str | Path | None,
                        out: str | Path) -> ConvertReport:  # fmt: skip
    """Kit weights (+ bridges.safetensors, default: the weights' directory's) -> the release's file layout. A
    LoRA run's model directory (or a bare adapter directory) gives its adapter in diffusers' Flux LoRA keys
    instead (`lora_to_diffusers`): the base is the release itself."""
    out = Path(out)
    refuse_nonempty(out, "--out")
    if is_adapter_dir(weights):
        return lora_to_diffusers(cfg, weights, out)
    found = read_weights(weights, "--transformer")
    other = next((k for k in found.tensors if not k.startswith("model.")), None)
    if other is not None:
        raise ConfigError("--transformer", f"{found.source} holds {other}; the official layout has the MM-DiT only")
    state = found.part("model")
    check_keys(state, _model_shapes(cfg), "--transformer", str(found.source), f"the {cfg.name} model")
    if cfg.bridge.kind != "scalar_bias":
        raise ConfigError("bridge.kind", f"the official layout holds a scalar_bias bridge, the config says "
                                         f"{cfg.bridge.kind}")  # fmt: skip
    bridge_path = Path(bridge) if bridge else found.directory / layout.BRIDGES
    fitted = load_bridges(bridge_from_config(cfg), bridge_path, "--bridge")
    # clone: each tensor its own storage, as in the release's files (split views would share the fused one)
    official = {k: v.clone() for k, v in kit_to_official(state, *_blocks(cfg)).items()}
    files = [out / OFFICIAL_TRANSFORMER, out / OFFICIAL_BRIDGE]
    files[0].parent.mkdir(parents=True, exist_ok=True)
    torch.save(official, files[0])
    bridge_state = kit_bridge_to_official(fitted.state_dict())
    torch.save({k: v.detach().clone() for k, v in bridge_state.items()}, files[1])
    return ConvertReport(sum(v.numel() for v in state.values()), files)


def lora_to_diffusers(cfg: NamiConfig, directory: str | Path, out: Path) -> ConvertReport:
    """The adapter in `directory` -> out/pytorch_lora_weights.safetensors in diffusers' Flux LoRA keys, for the
    release's own pipeline: `pipe.load_lora_weights(out)` (see `official.kit_lora_to_diffusers`)."""
    from safetensors.torch import save_file

    from ..models.lora import AdapterSpec, check_adapter_state

    adapter = read_adapter(directory, "--transformer")
    with torch.device("meta"):
        model = build_model(cfg)
    spec = AdapterSpec.from_peft(adapter.config, model)
    check_adapter_state(model, spec, adapter.state, "--transformer")
    state = kit_lora_to_diffusers(adapter.state, spec.alpha / spec.rank, *_blocks(cfg), cfg.model.width)
    out.mkdir(parents=True, exist_ok=True)
    path = out / DIFFUSERS_LORA
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return ConvertReport(sum(v.numel() for v in adapter.state.values()), [path])
