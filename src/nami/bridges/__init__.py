"""BridgeFlow variants between stages, a registry by name, fitting and safetensors I/O."""

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
from .nonlinear import CNNBridge, MLPBridge
from .renoise import RenoiseBridge


def bridge_from_config(cfg) -> BridgeFlow:
    """The configured kind at the config's latent shape (weights not loaded; see load_bridges)."""
    from ..flow import PyramidSchedule

    return build_bridge(
        cfg.bridge.kind,
        PyramidSchedule.from_config(cfg.flow),
        cfg.autoencoder.channels,
        cfg.stage_latent_sizes(),
        cfg.bridge.hidden,
    )


__all__ = [
    "BridgeFlow",
    "ClosedFormFit",
    "CNNBridge",
    "Conv1x1Bridge",
    "IdentityBridge",
    "MLPBridge",
    "RenoiseBridge",
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
