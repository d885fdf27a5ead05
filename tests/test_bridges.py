"""BridgeFlow kinds: registry, closed-form fits against torch.linalg.lstsq, SGD, rank all-reduce, I/O."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nami.bridges import (
    bridge_mse,
    build_bridge,
    fit_closed_form,
    fit_sgd,
    load_bridges,
    save_bridges,
)
from nami.config import ConfigError
from nami.flow import PyramidSchedule, bridge_pair
from nami.registry import BRIDGES

SCHED = PyramidSchedule()
SIZES = [4, 8, 16]
C = 3


def _pairs(batches: int, batch: int = 8, seed: int = 0):
    """Bridge MSE pairs from structured random 'images' (channel-correlated, spatially smooth)."""
    mix = torch.randn(C, C, generator=torch.Generator().manual_seed(99))  # one fixed 'colour' mixing
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batches):
        k = 1 + i % 2
        base = torch.randn(batch, C, SIZES[k], SIZES[k], generator=g).cumsum(-1).cumsum(-2) / 8
        x = torch.einsum("oc,bchw->bohw", mix, base) + 0.3
        out.append((*bridge_pair(x, torch.randn(x.shape, generator=g), k, SCHED), k))
    return out


def _pixels(t):
    return t.double().permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def test_registry_has_every_kind_and_each_maps_shapes():
    assert set(BRIDGES.names()) == {"scalar_bias", "conv1x1", "mlp", "cnn", "identity", "renoise"}
    u = torch.randn(2, C, 8, 8)
    for kind in BRIDGES.names():
        bridge = build_bridge(kind, SCHED, C, SIZES)
        out = bridge(u, 1)
        assert out.shape == u.shape
        if kind not in ("renoise",):  # unfitted learnable bridges start as the identity map
            assert torch.allclose(out, u)
    assert not build_bridge("renoise", SCHED, C, SIZES).learnable
    with pytest.raises(ConfigError, match="bridge.kind"):
        build_bridge("linear", SCHED, C, SIZES)


def test_conv1x1_closed_form_equals_lstsq():
    pairs = _pairs(12)
    bridge = build_bridge("conv1x1", SCHED, C, SIZES)
    fit_closed_form(bridge, pairs)  # streamed over 12 batches
    for k in (1, 2):
        u = torch.cat([_pixels(p[0]) for p in pairs if p[2] == k])
        y = torch.cat([_pixels(p[1]) for p in pairs if p[2] == k])
        design = torch.cat([u, torch.ones(len(u), 1, dtype=u.dtype)], dim=1)
        theta = torch.linalg.lstsq(design, y).solution
        assert torch.allclose(bridge.weight[k - 1].double(), theta[:C].T, atol=1e-5)
        assert torch.allclose(bridge.bias[k - 1].double(), theta[C], atol=1e-5)
        assert not torch.allclose(theta[:C].T, torch.eye(C, dtype=theta.dtype), atol=1e-2)  # a real map


def test_scalar_bias_closed_form_equals_lstsq():
    pairs = _pairs(10, batch=6, seed=1)
    bridge = build_bridge("scalar_bias", SCHED, C, SIZES)
    fit_closed_form(bridge, pairs)
    for k in (1, 2):
        u = torch.cat([p[0] for p in pairs if p[2] == k]).double().flatten(1)  # (N, P)
        y = torch.cat([p[1] for p in pairs if p[2] == k]).double().flatten(1)
        n, positions = u.shape
        # unknowns [a, B_1..B_P]; one row per (sample, position): y = a u + B_p
        design = torch.zeros(n * positions, 1 + positions, dtype=torch.float64)
        design[:, 0] = u.reshape(-1)
        design[torch.arange(n * positions), 1 + torch.arange(positions).repeat(n)] = 1.0
        theta = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution[:, 0]
        assert abs(bridge.scale[k - 1].item() - theta[0].item()) < 1e-5
        assert torch.allclose(bridge.bias[k - 1].double().flatten(), theta[1:], atol=1e-5)


@pytest.mark.parametrize("kind", ["conv1x1", "scalar_bias"])
def test_sgd_approaches_the_closed_form(kind):
    pairs = _pairs(8, seed=2)
    exact = build_bridge(kind, SCHED, C, SIZES)
    fit_closed_form(exact, pairs)
    best = bridge_mse(exact, pairs)
    sgd = build_bridge(kind, SCHED, C, SIZES)
    start = bridge_mse(sgd, pairs)
    losses = fit_sgd(sgd, iter(pairs * 250), steps=2000, lr=1e-2)
    final = bridge_mse(sgd, pairs)
    for k in (1, 2):
        assert final[k] < start[k]
        # SGD closes at least 95% of the gap between the identity start and the least-squares optimum
        assert final[k] - best[k] <= 0.05 * (start[k] - best[k]), (kind, k, start[k], final[k], best[k])
    assert losses[-1] < losses[0]


def test_fitted_bridge_beats_identity_on_heldout_pairs():
    train, heldout = _pairs(12, seed=3), _pairs(4, seed=4)
    bridge = build_bridge("conv1x1", SCHED, C, SIZES)
    fit_closed_form(bridge, train)
    fitted, identity = bridge_mse(bridge, heldout), bridge_mse(build_bridge("identity", SCHED, C, SIZES), heldout)
    assert all(fitted[k] < identity[k] for k in (1, 2))


def test_closed_form_refuses_nonlinear_kinds():
    with pytest.raises(ValueError):
        fit_closed_form(build_bridge("mlp", SCHED, C, SIZES), _pairs(1))


def test_scalar_bias_has_a_fixed_output_size():
    with pytest.raises(ValueError, match="fixed output size"):
        build_bridge("scalar_bias", SCHED, C, SIZES)(torch.randn(1, C, 16, 16), 1)


def test_save_load_round_trip_and_mismatch(tmp_path):
    bridge = build_bridge("conv1x1", SCHED, C, SIZES)
    fit_closed_form(bridge, _pairs(4))
    path = save_bridges(bridge, tmp_path / "bridges.safetensors")
    fresh = load_bridges(build_bridge("conv1x1", SCHED, C, SIZES), path)
    assert all(torch.equal(a, b) for a, b in zip(bridge.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(ConfigError) as err:
        load_bridges(build_bridge("scalar_bias", SCHED, C, SIZES), path)
    assert err.value.key == "bridge.weights" and "kind=conv1x1" in str(err.value)
    with pytest.raises(ConfigError):
        load_bridges(build_bridge("conv1x1", SCHED, 4, SIZES), path)  # other channel count
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ConfigError, match="junk.safetensors"):
        load_bridges(bridge, tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError, match="missing.safetensors"):
        load_bridges(bridge, tmp_path / "missing.safetensors")


ALL_REDUCE_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_bridges import _pairs, SCHED, SIZES, C
    from nami.bridges import build_bridge, fit_closed_form
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pairs = _pairs(8)
    bridge = build_bridge("{kind}", SCHED, C, SIZES)
    fit_closed_form(bridge, pairs[rank::world])  # each rank sees half the batches
    if rank == 0:
        torch.save(bridge.state_dict(), {out!r})
    dist.destroy_process_group()
    """
)


@pytest.mark.parametrize("kind", ["conv1x1", "scalar_bias"])
def test_moments_are_all_reduced_across_ranks(kind, tmp_path):
    out = tmp_path / "rank0.pt"
    script = tmp_path / "fit.py"
    script.write_text(ALL_REDUCE_SCRIPT.format(tests=str(Path(__file__).parent), kind=kind, out=str(out)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    single = build_bridge(kind, SCHED, C, SIZES)
    fit_closed_form(single, _pairs(8))
    distributed = torch.load(out, weights_only=True)
    for name, value in single.state_dict().items():
        assert torch.allclose(distributed[name], value, atol=1e-6), name
