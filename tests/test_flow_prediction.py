"""Data (x-) prediction: the velocity it implies is exact on the rectified-flow path and consistent with sampling."""

from __future__ import annotations

import pytest
import torch

from nami.flow import PyramidFlow, PyramidSchedule, flow_sample, velocity_from_output
from nami.flow.prediction import MIN_SIGMA

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
    assert velocity_from_output(out, z, sigma, 0.3, "velocity") is out
    with pytest.raises(ValueError, match="flow.prediction"):
        velocity_from_output(out, z, sigma, 0.3, "noise")


@pytest.mark.parametrize("flow", [PyramidFlow(SCHED, prediction="data"), PyramidFlow(SCHED, prediction="data").uniform()],
                         ids=["stage0", "uniform"])  # fmt: skip
def test_true_data_gives_the_training_target(flow):
    """Stage 0 (and the one-stage flow) runs on z = sigma n + (1 - sigma) x exactly: the oracle x is exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1
    sigma = torch.rand(16, generator=g) * 0.9 + 0.1  # global sigma >= 0.1 > MIN_SIGMA in both schedules
    sample = flow_sample(x, 0, flow.schedule, None, sigma_local=sigma, generator=g)
    assert torch.allclose(flow.velocity(x, sample.z, sample.sigma_local, 0), sample.target, atol=1e-5)
    wrong = flow.velocity(torch.zeros_like(x), sample.z, sample.sigma_local, 0)
    assert (wrong - sample.target).abs().max() > 0.1


def test_euler_with_the_true_data_lands_on_it():
    """Each Euler step of (z - x) / sigma moves exactly along the straight path, so any step count is exact."""
    flow = PyramidFlow(SCHED, prediction="data").uniform()
    x, n = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16)
    steps = int(1 / MIN_SIGMA)  # the last step evaluates at sigma = 1 / steps, still unclamped
    assert torch.allclose(flow.sample(lambda z, t, k, c: x.expand_as(z), n, None, [steps]).final, x, atol=1e-5)


def test_small_sigma_is_clamped():
    """Near the data end 1 / sigma is bounded by 1 / MIN_SIGMA, so output errors are not blown up."""
    flow = PyramidFlow(SCHED, prediction="data").uniform()
    z, out = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    v = flow.velocity(out, z, torch.tensor([0.001]), 0)
    assert torch.allclose(v, torch.full_like(v, -1 / MIN_SIGMA))
