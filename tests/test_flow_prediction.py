"""Data (x-) prediction: the velocity it implies is exact on the rectified-flow path and consistent with sampling."""

from __future__ import annotations

import pytest
import torch

from nami.config import ConfigError
from nami.flow import DataPrediction, PyramidFlow, PyramidSchedule, VelocityPrediction
from nami.flow.prediction import MIN_SIGMA
from nami.registry import PREDICTIONS

SCHED = PyramidSchedule()


def test_model_time_round_trip_and_global_sigma_endpoints():
    sigma = torch.rand(64, dtype=torch.float64)
    for k in range(SCHED.num_stages):
        assert torch.allclose(SCHED.sigma_local_at(k, SCHED.model_time(k, sigma)), sigma, atol=1e-12)
        assert SCHED.global_sigma(k, 1.0) == pytest.approx(SCHED.start_sigmas[k])
        assert SCHED.global_sigma(k, 0.0) == pytest.approx(SCHED.end_sigmas[k])


def test_velocity_prediction_passes_the_output_through():
    out, z = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    sigma = torch.full((3,), 0.9)
    assert VelocityPrediction()(out, z, sigma, 0.3) is out
    assert PREDICTIONS.create("velocity") == VelocityPrediction()
    with pytest.raises(ConfigError, match="flow.prediction"):
        PREDICTIONS.create("noise")


DATA = PyramidFlow(SCHED, prediction=DataPrediction())


@pytest.mark.parametrize("flow", [DATA, DATA.uniform()], ids=["stage0", "uniform"])
def test_true_data_gives_the_training_target(flow):
    """Stage 0 (and the one-stage flow) runs on z = sigma n + (1 - sigma) x exactly: the oracle x is exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1
    sigma = torch.rand(16, generator=g) * 0.9 + 0.1  # global sigma >= 0.1 > MIN_SIGMA in both schedules
    sample = flow.training_sample(x, 0, g, sigma_local=sigma)
    assert torch.allclose(flow.velocity(x, sample.z, sample.sigma_local, 0), sample.target, atol=1e-5)
    wrong = flow.velocity(torch.zeros_like(x), sample.z, sample.sigma_local, 0)
    assert (wrong - sample.target).abs().max() > 0.1


def test_euler_with_the_true_data_lands_on_it():
    """Each Euler step of (z - x) / sigma moves exactly along the straight path, so any step count is exact."""
    flow = DATA.uniform()
    x, n = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16)
    steps = int(1 / MIN_SIGMA)  # the last step evaluates at sigma = 1 / steps, still unclamped
    assert torch.allclose(flow.sample(lambda z, t, k, c: x.expand_as(z), n, None, [steps]).final, x, atol=1e-5)


def test_small_sigma_is_clamped():
    """Near the data end 1 / sigma is bounded by 1 / MIN_SIGMA, so output errors are not blown up."""
    flow = DATA.uniform()
    z, out = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    v = flow.velocity(out, z, torch.tensor([0.001]), 0)
    assert torch.allclose(v, torch.full_like(v, -1 / MIN_SIGMA))
