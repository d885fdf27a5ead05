"""Progressive sampling through `PyramidFlow.sample`: an oracle network through the real bridges lands on the
data point; guidance is one batched forward; the grid visits the model-time window."""

from __future__ import annotations

import pytest
import torch

from nami.bridges import build_bridge, fit_closed_form
from nami.flow import (
    PyramidFlow,
    PyramidSchedule,
    bridge_pair,
    data_pyramid,
    initial_noise,
    noise_pyramid,
    stage_endpoints,
)

SCHED = PyramidSchedule()
SIZES = [8, 16, 32]


def _fitted(kind: str):
    """A bridge fitted in closed form on random data, so it is a real, non-trivial map."""
    bridge = build_bridge(kind, SCHED, 3, SIZES)
    g = torch.Generator().manual_seed(3)
    pairs = []
    for k in (1, 2):
        x = torch.randn(16, 3, SIZES[k], SIZES[k], generator=g).cumsum(-1) / 4  # smooth-ish, not white
        pairs.append((*bridge_pair(x, torch.randn(x.shape, generator=g), k, SCHED), k))
    fit_closed_form(bridge, pairs)
    return bridge


@pytest.mark.parametrize("kind", ["conv1x1", "scalar_bias", "identity"])
@pytest.mark.parametrize("steps", [[10, 10, 10], [1, 3, 7]])
def test_oracle_velocity_lands_on_the_data_point(kind, steps):
    bridge = _fitted(kind) if kind != "identity" else build_bridge(kind, SCHED, 3, SIZES)
    flow = PyramidFlow(SCHED, bridge)
    x = torch.randn(2, 3, 32, 32).cumsum(-2) / 5  # the fixed data point
    n = torch.randn_like(x)  # the known noise draw
    xs, ns = data_pyramid(x, 3), noise_pyramid(n, 3)
    endpoints = [stage_endpoints(xs[k], ns[k], k, SCHED, bridge) for k in range(3)]

    def oracle(z, t, k, cond):
        start, end = endpoints[k]
        return start - end

    trace = flow.sample(oracle, ns[0], None, steps, keep_stages=True)
    for k in range(3):  # each stage starts where training says it starts and ends at its end point
        assert torch.allclose(trace.stage_starts[k], endpoints[k][0], atol=1e-5)
        assert torch.allclose(trace.stage_ends[k], endpoints[k][1], atol=1e-5)
    assert torch.allclose(trace.final, x, atol=1e-5)


def test_stage_predictions_are_the_clean_latent_on_the_path():
    """With the true velocity, each stage's last prediction x0 = z - sigma (n - x) is the stage's data level."""
    flow = PyramidFlow(SCHED, build_bridge("identity", SCHED, 3, SIZES))
    x = torch.randn(2, 3, 32, 32)
    n = torch.randn_like(x)
    xs, ns = data_pyramid(x, 3), noise_pyramid(n, 3)

    def oracle(z, t, k, cond):  # stage 0 runs exactly on the straight path between n^(0) and x^(0)
        return SCHED.width(k) * (ns[k] - xs[k])

    trace = flow.sample(oracle, ns[0], None, [4, 1, 1], keep_stages=True)
    assert torch.allclose(trace.stage_predictions[0], xs[0], atol=1e-5)
    assert len(trace.stage_predictions) == 3


def test_oracle_sampler_single_stage():
    flow = PyramidFlow(SCHED).uniform()
    x = torch.randn(2, 3, 16, 16)
    n = torch.randn_like(x)
    times = []

    def oracle(z, t, k, cond):
        times.append(t[0].item())
        return n - x

    out = flow.sample(oracle, n, None, [30]).final
    assert torch.allclose(out, x, atol=1e-5)
    assert times[0] == pytest.approx(1000.0) and times[-1] == pytest.approx(1000 / 30, rel=1e-4)


def test_linear_grid_visits_the_model_time_window():
    seen = []

    def record(z, t, k, cond):
        if k == 1:
            seen.append(t[0].item())
        return torch.zeros_like(z)

    flow = PyramidFlow(SCHED, build_bridge("identity", SCHED, 3, SIZES))
    flow.sample(record, torch.zeros(1, 3, 8, 8), None, [1, 4, 1])
    t_start, t_end = SCHED.model_time_windows[1]
    assert seen == pytest.approx([t_end + f * (t_start - t_end) for f in (1.0, 0.75, 0.5, 0.25)])


def test_guidance_is_one_batched_forward():
    calls = []

    def batched(z2, t2, k, cond):
        calls.append(z2.shape[0])
        half = z2.shape[0] // 2
        return torch.cat([torch.full_like(z2[:half], 3.0), torch.full_like(z2[half:], 1.0)])

    flow = PyramidFlow(SCHED).uniform()
    out = flow.sample(batched, torch.zeros(4, 3, 2, 2), None, [1], guidance=2.5)
    assert calls == [8]  # one forward over the doubled batch
    assert torch.allclose(out.final, torch.full_like(out.final, -(1.0 + 2.5 * (3.0 - 1.0))))

    calls.clear()
    flow.sample(lambda z, t, k, c: calls.append(z.shape[0]) or torch.zeros_like(z), torch.zeros(4, 3, 2, 2), None,
                [1], guidance=1.0)  # fmt: skip
    assert calls == [4]  # w = 1: no unconditional branch


def test_initial_noise_is_unit_variance_at_stage_zero():
    n = initial_noise((256, 3, 64, 64), 3, torch.Generator().manual_seed(0))
    assert n.shape == (256, 3, 16, 16) and abs(n.var().item() - 1) < 0.02
