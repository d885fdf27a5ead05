"""The math of multi-stage rectified flow (no Lightning, no I/O), after SiT's `transport/`.

`PyramidFlow` owns it: built once from a config (`PyramidFlow.from_config(cfg, bridge)`), it gives the training
loss and the sampler for a network passed in as a function. The modules below hold one equation each:
pyramid.py (Down/Up, data and noise pyramids, block and detail noise), schedule.py (stage boundaries and
model-time windows), densities.py (in-window sigma'), prediction.py (output -> velocity), training.py
(start/end points, flow samples, bridge pairs, stage mix), grids.py (sampler timestep grids), sampler.py
(Euler stage, stage-0 noise). Densities, predictions and grids are registered components (`nami.registry`):
classes built from their own config block, which `PyramidFlow` holds as objects.
"""

from .densities import LogitNormal, TimestepDensity, Uniform
from .grids import LinearGrid, OfficialGrid, StageGrid, TimestepGrid
from .prediction import DataPrediction, Prediction, VelocityPrediction
from .pyramid import (
    Generators,
    block_noise,
    data_pyramid,
    detail_band,
    detail_noise,
    down,
    noise_down,
    noise_pyramid,
    seeded_randn,
    up,
)
from .pyramid_flow import ModelFn, PyramidFlow, StageLosses
from .sampler import SampleTrace, VelocityFn, euler_stage, initial_noise
from .schedule import PyramidSchedule
from .training import (
    Bridge,
    FlowSample,
    StageMix,
    bridge_jump,
    bridge_pair,
    interpolate,
    previous_end,
    stage_endpoints,
)

__all__ = [
    "Bridge",
    "DataPrediction",
    "FlowSample",
    "Generators",
    "LinearGrid",
    "LogitNormal",
    "ModelFn",
    "OfficialGrid",
    "Prediction",
    "PyramidFlow",
    "PyramidSchedule",
    "SampleTrace",
    "StageGrid",
    "StageLosses",
    "StageMix",
    "TimestepDensity",
    "TimestepGrid",
    "Uniform",
    "VelocityFn",
    "VelocityPrediction",
    "block_noise",
    "bridge_jump",
    "bridge_pair",
    "data_pyramid",
    "detail_band",
    "detail_noise",
    "down",
    "euler_stage",
    "initial_noise",
    "interpolate",
    "noise_down",
    "noise_pyramid",
    "previous_end",
    "seeded_randn",
    "stage_endpoints",
    "up",
]
