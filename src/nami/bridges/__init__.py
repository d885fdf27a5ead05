"""BridgeFlow variants between stages, a registry by name, fitting and safetensors I/O."""

from ..flow import PyramidSchedule
from . import linear, nonlinear, renoise  # noqa: F401  (registers the kinds)
from .base import BridgeFlow, build_bridge, register
from .fit import (
    ClosedFormFit,
    all_reduce_moments,
    bridge_mse,
    fit_closed_form,
    fit_sgd,
    pairs_loss,
    squared_errors,
)
from .io import load_bridges, save_bridges
from .linear import Conv1x1Bridge, IdentityBridge, ScalarBiasBridge
from .nonlinear import CNNBridge, MLPBridge, ResidualParams
from .renoise import RenoiseBridge


def bridge_from_config(cfg, schedule: PyramidSchedule | None = None) -> BridgeFlow:
    """The configured kind (`bridge.kind` with its `bridge.params`) at the config's latent shape, over `schedule`
    (default: the config's own; `build_parts` passes the one it builds for the flow). Weights are not loaded
    (see load_bridges)."""
    if schedule is None:
        schedule = PyramidSchedule.from_config(cfg.flow)
    return build_bridge(cfg.bridge.kind, schedule, cfg.autoencoder.channels, cfg.stage_latent_sizes(),
                        cfg.bridge.params)  # fmt: skip


__all__ = [
    "BridgeFlow",
    "ClosedFormFit",
    "CNNBridge",
    "Conv1x1Bridge",
    "IdentityBridge",
    "MLPBridge",
    "RenoiseBridge",
    "ResidualParams",
    "ScalarBiasBridge",
    "all_reduce_moments",
    "bridge_from_config",
    "bridge_mse",
    "build_bridge",
    "fit_closed_form",
    "fit_sgd",
    "load_bridges",
    "pairs_loss",
    "register",
    "save_bridges",
    "squared_errors",
]
