"""`build_parts(cfg)`: the one builder of what a run needs, handed to LightningModules, benches and notebooks.

Model, text encoder, autoencoder, bridge and `PyramidFlow` are built here from the config, the way
lightning-hydra-template builds the net before the LightningModule sees it; nothing downstream reads
`cfg.flow` or builds a part of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .artifacts.weights import fitted_bridge, load_parts_weights, read_weights
from .bridges import BridgeFlow, bridge_from_config
from .config import ConfigError, NamiConfig
from .flow import PyramidFlow, PyramidSchedule
from .models import Autoencoder, NestedMMDiT, TextEncoder, build_autoencoder, build_model, build_text_encoder


@dataclass
class Parts:
    """Everything the flow math needs around it; `flow.bridge` is `bridge`."""

    model: NestedMMDiT | None  # None when built with networks=False (bridge fitting)
    text_encoder: TextEncoder | None  # None with networks=False or encoders=False
    autoencoder: Autoencoder | None  # None with encoders=False (training from precomputed shards)
    bridge: BridgeFlow
    flow: PyramidFlow


def build_parts(
    cfg: NamiConfig,
    run_dir: str | Path | None = None,
    fitted: bool = True,
    networks: bool = True,
    bridge: BridgeFlow | None = None,
    encoders: bool = True,
) -> Parts:
    """The parts `cfg` describes. With `fitted` the bridge's weights are loaded (see `fitted_bridge`), else
    it is freshly initialised (bridge fitting, speed benchmarks); a given `bridge` is used as it is.
    `networks=False` leaves out the MM-DiT and the text encoder (bridge fitting needs neither; at 2B they are
    most of the memory). `encoders=False` leaves out the frozen text encoder and the autoencoder: training from
    precomputed shards (data.precomputed) reads their outputs, so nothing is built or loaded (the config refuses
    data.precomputed with a text encoder that trains with the model). The schedule is built once, here, for
    the bridge and the flow."""
    schedule = PyramidSchedule.from_config(cfg.flow)
    if bridge is None:
        bridge = fitted_bridge(cfg, run_dir, schedule) if fitted else bridge_from_config(cfg, schedule)
    return Parts(
        model=build_model(cfg) if networks else None,
        text_encoder=build_text_encoder(cfg.text_encoder) if networks and encoders else None,
        autoencoder=build_autoencoder(cfg.autoencoder) if encoders else None,
        bridge=bridge,
        flow=PyramidFlow.from_config(cfg, bridge, schedule),
    )


def build_encoders(cfg: NamiConfig) -> tuple[TextEncoder, Autoencoder]:
    """The text encoder and the autoencoder alone (`nami data encode`; sampling after precomputed training)."""
    return build_text_encoder(cfg.text_encoder), build_autoencoder(cfg.autoencoder)


def trained_parts(cfg: NamiConfig, path: str | Path, key: str = "--ckpt") -> tuple[Parts, Path]:
    """The parts `cfg` describes holding the weights `path` stands for (`nami.artifacts.weights`), with the
    bridge that belongs with them (bridge.weights, else the weights' directory's bridges.safetensors); also
    the directory the weights came from."""
    weights = read_weights(path, key)
    check_shapes_before_building(cfg, weights, key)
    parts = build_parts(cfg, weights.directory)
    load_parts_weights(weights, {"model": parts.model, "text_encoder": parts.text_encoder}, key)
    if weights.adapter:  # a LoRA run's checkpoint or weights: its adapter on the base, active at scale 1
        _add_run_adapter(cfg, parts.model, weights, key)
    return parts, weights.directory


def _add_run_adapter(cfg: NamiConfig, model, weights, key: str) -> None:
    from .models.lora import TRAINING_ADAPTER, AdapterSpec, add_adapter

    if cfg.finetune.lora.rank <= 0:
        raise ConfigError(key, f"{weights.source} holds a LoRA adapter and this config has finetune.lora.rank=0 "
                               "(sample it with the run's own config)")  # fmt: skip
    state = {k[len("model.") :]: v for k, v in weights.adapter.items()}
    add_adapter(model, AdapterSpec.from_config(cfg.finetune.lora, cfg.model, model), TRAINING_ADAPTER, state, key)
    model.requires_grad_(False)


def check_shapes_before_building(cfg: NamiConfig, weights, key: str = "--ckpt") -> None:
    """The weights' MM-DiT tensors against the shapes `cfg`'s model would have, compared on the meta device
    before the model is built: a config that does not describe these weights (a tampered config.json claiming
    a far larger model) is one line, not an allocation of what it claims."""
    import torch

    with torch.device("meta"):
        meta = build_model(cfg)
    own = weights.part("model")
    for name, tensor in meta.state_dict().items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise ConfigError(key, f"{weights.source} does not fit this config's model: {name} is "
                                   f"{tuple(own[name].shape)} there, {tuple(tensor.shape)} here "
                                   "(another model.width / heads / blocks?)")  # fmt: skip
    missing = [name for name in meta.state_dict() if name not in own]
    if missing:
        raise ConfigError(key, f"{weights.source} does not fit this config's model (it lacks {missing[0]})")
