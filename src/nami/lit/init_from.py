"""`trainer.init_from=DIR`: start joint training from given weights (a converted release, an exported model).

DIR holds weights.safetensors ("model." keys, as `nami convert official` and training write them) or
model.safetensors (the same keys, as `nami export` writes them) and, beside it, bridges.safetensors. The
MM-DiT and its EMA copy both start from the weights; the bridge comes from DIR unless `bridge.weights` names
another file (e.g. one refitted with `nami pretrain-bridge`). Optimizer, step and data position start fresh:
this is initialisation, not resume (`trainer.resume` is).
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, NamiConfig
from .checkpoint_files import load_weights_into, read_weights

KEY = "trainer.init_from"


def init_dir(cfg: NamiConfig) -> Path | None:
    """The directory trainer.init_from points at (checked before any data or model is touched), or None."""
    if not cfg.trainer.init_from:
        return None
    path = Path(cfg.trainer.init_from)
    if not path.exists():
        raise ConfigError(KEY, f"not found: {path}")
    folder = path if path.is_dir() else path.parent
    weights_files = ("weights.safetensors", "model.safetensors")
    if not any((folder / name).is_file() for name in weights_files) and not path.is_file():
        raise ConfigError(KEY, f"{path} holds no weights.safetensors (`nami convert official` writes one) "
                               "nor model.safetensors (`nami export`)")  # fmt: skip
    return folder


def bridge_dir(cfg: NamiConfig, run_dir: Path) -> Path:
    """Where training finds its fitted bridge (when bridge.weights is not set): beside the initial weights
    with trainer.init_from, else in the run directory."""
    return init_dir(cfg) or run_dir


def load_initial_weights(module, cfg: NamiConfig) -> None:
    """Fill the module's model and its EMA copy (and a trainable text encoder, when the weights hold one)
    from trainer.init_from; nothing without it."""
    if not cfg.trainer.init_from:
        return
    weights, _ = read_weights(Path(cfg.trainer.init_from), KEY)
    source = Path(cfg.trainer.init_from)
    for name, part in module.trainable().items():
        state = {k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(f"{name}.")}
        if not state and name == "text_encoder":
            continue  # weights converted from the release carry no text encoder: it starts fresh
        for target in (part, module.ema[name]):
            load_weights_into(target, state, source, name, key=KEY)
