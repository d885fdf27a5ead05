"""bridges.safetensors: BridgeFlow weights with the kind, parameters and shape they were fitted for."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..config import ConfigError
from ..registry import plain_params
from .base import BridgeFlow


def _signature(bridge: BridgeFlow) -> dict[str, str]:
    return {
        "kind": bridge.kind,
        "params": json.dumps(plain_params(bridge.params), sort_keys=True),
        "channels": str(bridge.channels),
        "stage_sizes": json.dumps(bridge.stage_sizes),
        "stage_range": json.dumps(list(bridge.schedule.stage_range)),
    }


def save_bridges(bridge: BridgeFlow, path: str | Path) -> Path:
    """Write the bridge's tensors and signature (kind, its parameters, channels, stage sizes, stage range)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in bridge.state_dict().items()}
    save_file(tensors, str(path), metadata=_signature(bridge))
    return path


def load_bridges(bridge: BridgeFlow, path: str | Path, key: str = "bridge.weights") -> BridgeFlow:
    """Load weights into `bridge`; a file for another kind or shape is a ConfigError naming `key`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(key, f"{path} is not a readable safetensors file ({err})") from None
    expected = _signature(bridge)
    for field, value in expected.items():
        if field in metadata and metadata[field] != value:
            raise ConfigError(key, f"{path} holds {field}={metadata[field]}, the config needs {value}")
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ConfigError(key, f"{path}: {name} holds {'NaN or infinite' if tensor.is_floating_point() else 'non-float'} "
                                   "values; refusing to load the bridge")  # fmt: skip
    missing, unexpected = bridge.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ConfigError(key, f"{path} does not match bridge kind {bridge.kind!r} "
                               f"(missing {missing}, unexpected {unexpected})")
    return bridge
