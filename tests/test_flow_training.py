"""Training sample construction (DESIGN section 3): endpoints, interpolation, targets, densities."""

from __future__ import annotations

import pytest
import torch

from nami.bridges import BridgeFlow, Conv1x1Bridge, IdentityBridge
from nami.config import ConfigError, RatioPhase
from nami.flow import (
    LogitNormal,
    PyramidFlow,
    PyramidSchedule,
    StageMix,
    Uniform,
    bridge_pair,
    down,
    noise_down,
    stage_endpoints,
    up,
)
from nami.registry import TIMESTEP_DENSITIES

SCHED = PyramidSchedule()
SIZES = [4, 8, 16]


def training_sample(x, k, schedule, bridge, generator=None, detail=False, **given):
    """Stage k's training example from the flow over `schedule` with `bridge`."""
    return PyramidFlow(schedule, bridge, detail_noise=detail).training_sample(x, k, generator, **given)


def _random_conv_bridge():
    bridge = Conv1x1Bridge(SCHED, 3, SIZES)
    with torch.no_grad():
        bridge.weight.add_(0.1 * torch.randn_like(bridge.weight))
        bridge.bias.normal_()
    return bridge


@pytest.mark.parametrize("k", [0, 1, 2])
def test_input_is_start_at_sigma_one_and_end_at_sigma_zero(k):
    x = torch.randn(4, 3, SIZES[k], SIZES[k])
    n = torch.randn_like(x)
    bridge = _random_conv_bridge()
    at_one = training_sample(x, k, SCHED, bridge, sigma_local=torch.ones(4), noise=n)
    at_zero = training_sample(x, k, SCHED, bridge, sigma_local=torch.zeros(4), noise=n)
    assert torch.equal(at_one.z, at_one.start) and torch.equal(at_zero.z, at_zero.end)
    assert torch.equal(at_one.target, at_one.start - at_one.end)
    t_start, t_end = SCHED.model_time_windows[k]
    assert at_one.model_time.tolist() == pytest.approx([t_start] * 4)
    assert at_zero.model_time.tolist() == pytest.approx([t_end] * 4)


def test_endpoints_follow_the_design_formulas():
    x2 = torch.randn(2, 3, 16, 16)
    n2 = torch.randn_like(x2)
    bridge = _random_conv_bridge()
    e = SCHED.end_sigmas
    # stage 0 starts at pure noise n^(0) = noise_down^2(n^(2)) and ends at e_0
    x0, n0 = down(down(x2)), noise_down(noise_down(n2))
    start0, end0 = stage_endpoints(x0, n0, 0, SCHED, bridge)
    assert torch.equal(start0, n0) and torch.allclose(end0, e[0] * n0 + (1 - e[0]) * x0)
    # the last stage ends at the data point itself
    start2, end2 = stage_endpoints(x2, n2, 2, SCHED, bridge)
    assert torch.equal(end2, x2)
    # start_k = Bridge_k(Up(end_(k-1))), with end_(k-1) built from the pooled data and noise
    x1, n1 = down(x2), noise_down(n2)
    end1 = e[1] * n1 + (1 - e[1]) * x1
    assert torch.allclose(start2, bridge(up(end1), 2), atol=1e-6)


def test_single_stage_is_plain_rectified_flow():
    uniform = PyramidSchedule.uniform()
    x = torch.randn(5, 3, 16, 16)
    n = torch.randn_like(x)
    sigma = torch.rand(5)
    sample = training_sample(x, 0, uniform, None, sigma_local=sigma, noise=n)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(sample.z, (1 - s) * x + s * n, atol=1e-6)
    assert torch.allclose(sample.target, n - x, atol=1e-6)
    assert torch.allclose(sample.model_time, 1000 * sigma, atol=1e-4)


def test_bridge_pair_targets_the_same_noise_level_one_resolution_up():
    x = torch.randn(3, 3, 8, 8)
    n = torch.randn_like(x)
    u, y = bridge_pair(x, n, 1, SCHED)
    e0 = SCHED.end_sigmas[0]
    assert torch.allclose(u, up(e0 * noise_down(n) + (1 - e0) * down(x)), atol=1e-6)
    assert torch.allclose(y, e0 * n + (1 - e0) * x, atol=1e-6)
    # the identity bridge input is exactly what stage 1 starts from with the identity bridge
    start, _ = stage_endpoints(x, n, 1, SCHED, IdentityBridge(SCHED, 3, SIZES))
    assert torch.equal(start, u)
    with pytest.raises(ValueError):
        bridge_pair(x, n, 0, SCHED)


def test_timestep_densities():
    g = torch.Generator().manual_seed(0)
    s = LogitNormal()(200_000, g)
    logits = torch.log(s / (1 - s))
    assert abs(logits.mean().item()) < 0.01 and abs(logits.std().item() - 1) < 0.01
    shifted = TIMESTEP_DENSITIES.create("logit_normal", params={"mean": 1.0, "std": 0.5})(200_000, g)
    shifted_logits = torch.log(shifted / (1 - shifted))
    assert abs(shifted_logits.mean().item() - 1.0) < 0.01 and abs(shifted_logits.std().item() - 0.5) < 0.01
    u = Uniform()(200_000, generator=g)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005
    with pytest.raises(ConfigError, match="flow.timestep_density"):
        TIMESTEP_DENSITIES.create("cosine")
    with pytest.raises(ConfigError, match="flow.density_params.std"):
        TIMESTEP_DENSITIES.create("logit_normal", params={"std": 0})


def test_ratio_schedule_phases():
    from nami.config import FlowConfig

    phases = [RatioPhase(0, [4, 2, 1]), RatioPhase(100, [2, 4, 1]), RatioPhase(200, [1, 2, 4])]
    mix = StageMix.from_config(FlowConfig(stage_ratios=[1, 1, 1], ratio_schedule=phases))
    assert mix.ratios_at(0) == [4, 2, 1]
    assert mix.ratios_at(150) == [2, 4, 1]
    assert mix.ratios_at(10_000) == [1, 2, 4]
    assert StageMix((1, 1, 1)).ratios_at(50) == [1, 1, 1]
    assert mix.all_ratios() == [[1, 1, 1], [4, 2, 1], [2, 4, 1], [1, 2, 4]]


def test_detail_noise_jump_restores_white_noise_at_the_previous_level():
    """Pure-noise data: the MSE-optimal linear bridge halves Up(n^(k-1)) = 2 Up(Down(n^(k))); adding
    e_(k-1) x detail then gives white noise at level e_(k-1), which Bridge(Up(.)) alone cannot."""
    from nami.bridges import fit_closed_form

    g = torch.Generator().manual_seed(0)
    bridge = Conv1x1Bridge(SCHED, 3, SIZES)
    x = torch.zeros(256, 3, 8, 8)
    fit_closed_form(bridge, [(*bridge_pair(x, torch.randn(x.shape, generator=g), 1, SCHED), 1)])
    assert torch.allclose(bridge.weight[0], 0.5 * torch.eye(3), atol=0.02)
    n = torch.randn(x.shape, generator=g)
    plain, _ = stage_endpoints(x, n, 1, SCHED, bridge)
    start, _ = stage_endpoints(x, n, 1, SCHED, bridge, detail=True)
    e0 = SCHED.end_sigmas[0]
    assert torch.allclose(down(start), down(plain), atol=1e-5)  # only block-zero-sum detail was added
    assert abs(plain.var().item() - e0**2 / 4) < 0.01  # a quarter of the variance the target has
    assert abs(start.var().item() - e0**2) < 0.01
    assert abs((start[..., 0::2, :] * start[..., 1::2, :]).mean().item()) < 0.01  # white: no block correlation


def test_detail_noise_in_training_is_the_stage_noise_so_the_velocity_is_predictable():
    """Start and end share the stage's noise draw n^(k), its detail band included: on pure-noise data with the
    optimal bridge (half of Up), start = e_(k-1) n and end = e_k n, so the target is an exact multiple of z.
    Fresh detail in the start (independent of the end's) would leave an irreducible part of the target."""

    class HalfUp(BridgeFlow):  # the MSE-optimal linear bridge for x = 0 (see the test above); not registered
        def transition(self, u, k, generator):
            return 0.5 * u

    g = torch.Generator().manual_seed(1)
    for k in (1, 2):
        x_k = torch.zeros(64, 3, 4 * 2**k, 4 * 2**k)
        sample = training_sample(x_k, k, SCHED, HalfUp(SCHED, 3, SIZES), generator=g, detail=True)
        e_prev, e_k = SCHED.end_sigmas[k - 1], SCHED.end_sigmas[k]
        ratio = (e_prev - e_k) / (sample.sigma_local * e_prev + (1 - sample.sigma_local) * e_k)
        assert torch.allclose(sample.target, ratio.view(-1, 1, 1, 1) * sample.z, atol=1e-5)
