"""The math of multi-stage rectified flow (no Lightning, no I/O), after SiT's `transport/`."""

from .pyramid import (
    Generators,
    block_noise,
    data_pyramid,
    detail_noise,
    down,
    noise_down,
    noise_pyramid,
    seeded_randn,
    up,
)
from .prediction import PREDICTIONS, velocity_from_output
from .sampler import SampleTrace, VelocityFn, euler_stage, guided, initial_noise, progressive_sample
from .schedule import PyramidSchedule
from .training import (
    Bridge,
    FlowSample,
    bridge_jump,
    bridge_pair,
    flow_sample,
    interpolate,
    sample_local_sigma,
    stage_endpoints,
    stage_ratios_at,
)

__all__ = [
    "Bridge",
    "FlowSample",
    "bridge_jump",
    "PyramidSchedule",
    "SampleTrace",
    "VelocityFn",
    "Generators",
    "block_noise",
    "bridge_pair",
    "data_pyramid",
    "detail_noise",
    "seeded_randn",
    "down",
    "euler_stage",
    "flow_sample",
    "guided",
    "initial_noise",
    "interpolate",
    "noise_down",
    "noise_pyramid",
    "progressive_sample",
    "sample_local_sigma",
    "stage_endpoints",
    "stage_ratios_at",
    "up",
    "PREDICTIONS",
    "velocity_from_output",
]
