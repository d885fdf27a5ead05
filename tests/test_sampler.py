"""Progressive sampling: an oracle velocity through the real bridges lands on the data point."""

from __future__ import annotations

import pytest
import torch

from nami.bridges import build_bridge, fit_closed_form
from nami.flow import (
    PyramidSchedule,
    bridge_pair,
    data_pyramid,
    euler_stage,
    guided,
    initial_noise,
    noise_pyramid,
    progressive_sample,
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
    x = torch.randn(2, 3, 32, 32).cumsum(-2) / 5  # the fixed data point
    n = torch.randn_like(x)  # the known noise draw
    xs, ns = data_pyramid(x, 3), noise_pyramid(n, 3)
    endpoints = [stage_endpoints(xs[k], ns[k], k, SCHED, bridge) for k in range(3)]

    def oracle(z, t, k):
        start, end = endpoints[k]
        return start - end

    trace = progressive_sample(oracle, ns[0], SCHED, steps, bridge, keep_stages=True)
    for k in range(3):  # each stage starts where training says it starts and ends at its end point
        assert torch.allclose(trace.stage_starts[k], endpoints[k][0], atol=1e-5)
        assert torch.allclose(trace.stage_ends[k], endpoints[k][1], atol=1e-5)
    assert torch.allclose(trace.final, x, atol=1e-5)


def test_oracle_sampler_single_stage():
    uniform = PyramidSchedule.uniform()
    x = torch.randn(2, 3, 16, 16)
    n = torch.randn_like(x)
    times = []

    def oracle(z, t, k):
        times.append(t[0].item())
        return n - x

    out = progressive_sample(oracle, n, uniform, [30], None).final
    assert torch.allclose(out, x, atol=1e-5)
    assert times[0] == pytest.approx(1000.0) and times[-1] == pytest.approx(1000 / 30, rel=1e-4)


def test_euler_stage_visits_the_model_time_window():
    seen = []

    def record(z, t, k):
        seen.append(t[0].item())
        return torch.zeros_like(z)

    euler_stage(record, torch.zeros(1, 3, 4, 4), 1, SCHED, 4)
    t_start, t_end = SCHED.model_time_windows[1]
    assert seen == pytest.approx([t_end + f * (t_start - t_end) for f in (1.0, 0.75, 0.5, 0.25)])


def test_guidance_is_one_batched_forward():
    calls = []

    def batched(z2, t2, k):
        calls.append(z2.shape[0])
        half = z2.shape[0] // 2
        return torch.cat([torch.full_like(z2[:half], 3.0), torch.full_like(z2[half:], 1.0)])

    v = guided(batched, 2.5)(torch.zeros(4, 3, 2, 2), torch.zeros(4), 0)
    assert calls == [8]
    assert torch.allclose(v, torch.full_like(v, 1.0 + 2.5 * (3.0 - 1.0)))


def test_renoise_sampling_is_seeded_and_lands_at_the_corrected_start():
    bridge = build_bridge("renoise", SCHED, 3, SIZES)
    z = torch.randn(1, 3, 16, 16)
    a = bridge(z, 2, generator=torch.Generator().manual_seed(5))
    b = bridge(z, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # a pure-noise end of stage 1 (data 0) jumps to white noise with the corrected start's std c_2
    e1 = SCHED.end_sigmas[1]
    end1 = e1 * torch.randn(4000, 1, 8, 8)
    jumped = bridge(torch.nn.functional.interpolate(end1, scale_factor=2), 2)
    assert abs(jumped.std().item() - SCHED.start_sigmas[2]) < 0.01


def test_initial_noise_is_unit_variance_at_stage_zero():
    n = initial_noise((256, 3, 64, 64), 3, torch.Generator().manual_seed(0))
    assert n.shape == (256, 3, 16, 16) and abs(n.var().item() - 1) < 0.02
