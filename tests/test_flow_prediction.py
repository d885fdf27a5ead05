"""Data (x-) prediction: the velocity it implies is exact on the rectified-flow path and consistent with sampling."""

from __future__ import annotations

import pytest
import torch

from nami.flow import (
    PyramidSchedule,
    euler_stage,
    flow_sample,
    velocity_from_output,
)
from nami.flow.prediction import MIN_SIGMA

SCHED = PyramidSchedule()


def test_model_time_round_trip_and_global_sigma_endpoints():
    sigma = torch.rand(64, dtype=torch.float64)
    for k in range(SCHED.num_stages):
        assert torch.allclose(SCHED.local_sigma(k, SCHED.model_time(k, sigma)), sigma, atol=1e-12)
        assert SCHED.global_sigma(k, 1.0) == pytest.approx(SCHED.start_sigmas[k])
        assert SCHED.global_sigma(k, 0.0) == pytest.approx(SCHED.end_sigmas[k])


def test_velocity_prediction_passes_the_output_through():
    out, z = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.full((3,), 900.0)
    assert velocity_from_output(out, z, 0, t, SCHED, "velocity") is out
    with pytest.raises(ValueError, match="unknown prediction"):
        velocity_from_output(out, z, 0, t, SCHED, "noise")


@pytest.mark.parametrize("schedule", [SCHED, PyramidSchedule.uniform()], ids=["stage0", "uniform"])
def test_true_data_gives_the_training_target(schedule):
    """Stage 0 (and the one-stage schedule) runs on z = sigma n + (1 - sigma) x exactly: the oracle x is exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1
    sigma = torch.rand(16, generator=g) * 0.9 + 0.1  # global sigma >= 0.1 > MIN_SIGMA in both schedules
    sample = flow_sample(x, 0, schedule, None, sigma=sigma, generator=g)
    v = velocity_from_output(x, sample.z, 0, sample.timestep, schedule, "data")
    assert torch.allclose(v, sample.target, atol=1e-5)
    wrong = velocity_from_output(torch.zeros_like(x), sample.z, 0, sample.timestep, schedule, "data")
    assert (wrong - sample.target).abs().max() > 0.1


def test_euler_with_the_true_data_lands_on_it():
    """Each Euler step of (z - x) / sigma moves exactly along the straight path, so any step count is exact."""
    uniform = PyramidSchedule.uniform()
    x, n = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16)
    steps = int(1 / MIN_SIGMA)  # the last step evaluates at sigma = 1 / steps, still unclamped

    def velocity(z, t, k):
        return velocity_from_output(x.expand_as(z), z, k, t, uniform, "data")

    assert torch.allclose(euler_stage(velocity, n, 0, uniform, steps), x, atol=1e-5)


def test_small_sigma_is_clamped():
    """Near the data end 1 / sigma is bounded by 1 / MIN_SIGMA, so output errors are not blown up."""
    uniform = PyramidSchedule.uniform()
    z, out = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    v = velocity_from_output(out, z, 0, torch.tensor([1.0]), uniform, "data")  # sigma = 0.001
    assert torch.allclose(v, torch.full_like(v, -1 / MIN_SIGMA))
