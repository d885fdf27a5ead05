"""LoRA adapters on disk, in PEFT's layout: `adapter_model.safetensors` (the adapter's tensors, keys as PEFT saves
them) and `adapter_config.json` (PEFT's `LoraConfig`: rank, alpha, dropout, the modules it targets, and
`base_model_name_or_path`, the base model directory the adapter was trained on). Read as data: safetensors and
JSON only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ConfigError
from . import layout
from .files import load_safetensors, write_atomically


@dataclass
class AdapterFiles:
    """An adapter read from its directory: PEFT's config, its tensors, and the base it was trained on."""

    directory: Path
    config: object  # peft.LoraConfig
    state: dict[str, torch.Tensor]

    @property
    def base(self) -> str | None:
        return getattr(self.config, "base_model_name_or_path", None)

    @property
    def name(self) -> str:
        """A name for the adapter on a model holding several: the directory's name, made unique by the caller."""
        return self.directory.resolve().name.replace(".", "_") or "adapter"


def is_adapter_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / layout.ADAPTER_CONFIG).is_file() and (path / layout.ADAPTER_WEIGHTS).is_file()


def parse_lora_argument(text: str) -> tuple[Path, float]:
    """`DIR[:SCALE]` (`nami sample --lora`): the adapter directory and its scale (default 1)."""
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(text), 1.0


def read_adapter(path: str | Path, key: str = "--lora") -> AdapterFiles:
    """The adapter in directory `path`; anything missing or unreadable is one ConfigError line naming it."""
    from peft import LoraConfig, PeftType

    path = Path(path)
    if not is_adapter_dir(path):
        raise ConfigError(key, f"{path} is not a LoRA adapter directory ({layout.ADAPTER_WEIGHTS} and "
                               f"{layout.ADAPTER_CONFIG}; a LoRA run's model directory holds them)")  # fmt: skip
    try:
        data = json.loads((path / layout.ADAPTER_CONFIG).read_text())
        if not isinstance(data, dict) or data.get("peft_type") not in (PeftType.LORA, "LORA"):
            raise ValueError(f"peft_type {data.get('peft_type') if isinstance(data, dict) else None!r}, not LORA")
        fields = {k: v for k, v in data.items() if k in LoraConfig.__dataclass_fields__}
        config = LoraConfig(**fields)
    except (ValueError, TypeError) as err:
        raise ConfigError(key, f"{path / layout.ADAPTER_CONFIG} is not a LoRA adapter config ({err})") from None
    return AdapterFiles(path, config, load_safetensors(path / layout.ADAPTER_WEIGHTS, key))


def write_adapter(directory: Path, peft_config, state: dict[str, torch.Tensor], base: str | Path | None) -> list[Path]:
    """Write an adapter's two files into `directory` (which the caller made), each atomically."""
    data = peft_config.to_dict()
    data["base_model_name_or_path"] = str(base) if base is not None else None
    data = {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}  # JSON has no sets
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    weights = write_atomically(directory / layout.ADAPTER_WEIGHTS,
                               lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))  # fmt: skip
    config = write_atomically(directory / layout.ADAPTER_CONFIG,
                              lambda p: p.write_text(json.dumps(data, indent=2, default=str) + "\n"))  # fmt: skip
    return [weights, config]
