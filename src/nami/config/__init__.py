"""Structured configs for the kit: dataclasses, YAML composition with `base:`, dotlist overrides, validation.

A config file is data: it names components by registry key and sets numbers. `load(path, overrides)` merges
the dataclass defaults, the chain of `base:` files, the file itself and the overrides (in that order), then
validates the result before any compute. Every failure raises `ConfigError` with the dotted key it is about;
the CLI prints it as one line and exits with code 2.

schema.py holds the dataclasses, loading.py the composition, validation.py the cross-field checks.
"""

from ..errors import ConfigError
from .loading import config_from_dict, load, to_dict
from .schema import (
    AutoencoderConfig,
    BridgeConfig,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    LoraConfig,
    FlowConfig,
    LogConfig,
    ModelConfig,
    NamiConfig,
    OptimConfig,
    RatioPhase,
    SamplerConfig,
    TextEncoderConfig,
    TrainerConfig,
)
from .validation import SAMPLER_MODES, STRATEGIES, validate

__all__ = [
    "AutoencoderConfig",
    "BridgeConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FinetuneConfig",
    "LoraConfig",
    "FlowConfig",
    "LogConfig",
    "ModelConfig",
    "NamiConfig",
    "OptimConfig",
    "RatioPhase",
    "SAMPLER_MODES",
    "STRATEGIES",
    "SamplerConfig",
    "TextEncoderConfig",
    "TrainerConfig",
    "config_from_dict",
    "load",
    "to_dict",
    "validate",
]
