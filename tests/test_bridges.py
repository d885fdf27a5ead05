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


def test_scalar_bias_resizes_its_map_for_other_sizes():
    """At its reference size a u + B exactly; at another size (an aspect-ratio bucket) a u + B resized: the map is
    a function of the normalised position, so a ramp across the width stays a ramp across the new width."""
    bridge = build_bridge("scalar_bias", SCHED, C, SIZES)
    with torch.no_grad():
        bridge.scale.fill_(0.5)
        bridge.bias[0].copy_(torch.linspace(-1, 1, 8).expand(C, 8, 8))  # transition 1's 8 x 8 map
    square = torch.randn(2, C, 8, 8)
    assert torch.equal(bridge(square, 1), 0.5 * square + bridge.bias[0])
    for shape in ((4, 16), (16, 4), (6, 10)):
        u = torch.randn(2, C, *shape)
        bias = bridge(u, 1) - 0.5 * u
        assert bias.shape == u.shape
        assert torch.allclose(bias, bias[:, :, :1].expand_as(bias), atol=1e-6)  # constant down every column
        row = bias[0, 0, 0]
        assert (row.diff() > 0).all() and -1 <= row.min() < -0.5 and 0.5 < row.max() <= 1  # the ramp, resampled
        assert torch.allclose(row, -row.flip(0), atol=1e-5)  # centred as the map is


def _sized_pairs(shapes, scale: float, bias: torch.Tensor, seed: int, noise: float = 0.0):
    """Transition-1 pairs at several sizes with y = scale u + bias (a map over the normalised position) + noise."""
    from nami.bridges.linear import resize_map

    g = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(shapes):
        u = torch.randn(4, C, *shape, generator=g) + i  # sizes differ in mean too
        y = scale * u + resize_map(bias, shape) + noise * torch.randn(u.shape, generator=g)
        out.append((u, y, 1))
    return out


SMOOTH_MAP = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(0, 2, 8), indexing="ij"))[:C]
SMOOTH_MAP = torch.cat([SMOOTH_MAP, SMOOTH_MAP[:1] * SMOOTH_MAP[1:2]])  # two ramps and their product


def test_scalar_bias_fits_batches_of_several_sizes_in_normalised_coordinates():
    shapes = [(8, 8), (4, 16), (16, 4), (6, 10)] * 3
    bridge = build_bridge("scalar_bias", SCHED, C, SIZES)
    fit_closed_form(bridge, _sized_pairs(shapes, 0.7, SMOOTH_MAP, seed=5))
    assert abs(bridge.scale[0].item() - 0.7) < 1e-6  # a noiseless residual is constant per position: exact
    # each size's mean residual is the map resized to it; resized back and averaged, it is the map again (smooth
    # maps survive bilinear resampling up to their borders)
    assert (bridge.bias[0] - SMOOTH_MAP).abs()[:, 1:-1, 1:-1].max() < 0.05, (bridge.bias[0] - SMOOTH_MAP).abs().max()
    # with noise, the scale is the pooled least-squares one over a free bias per (size, position)
    pairs = _sized_pairs(shapes, 0.7, SMOOTH_MAP, seed=6, noise=0.5)
    fit_closed_form(bridge, pairs)
    rows, targets, offset = [], [], 0
    by_shape: dict = {}
    for u, y, _ in pairs:
        by_shape.setdefault(tuple(u.shape[-2:]), []).append((u, y))
    for items in by_shape.values():
        u = torch.cat([a for a, _ in items]).double().flatten(1)
        y = torch.cat([b for _, b in items]).double().flatten(1)
        n, positions = u.shape
        rows.append((u.reshape(-1), offset + torch.arange(positions).repeat(n)))
        targets.append(y.reshape(-1))
        offset += positions
    design = torch.zeros(sum(len(r[0]) for r in rows), 1 + offset, dtype=torch.float64)
    start = 0
    for values, columns in rows:
        design[start : start + len(values), 0] = values
        design[start + torch.arange(len(values)), 1 + columns] = 1.0
        start += len(values)
    theta = torch.linalg.lstsq(design, torch.cat(targets)[:, None]).solution[:, 0]
    assert abs(bridge.scale[0].item() - theta[0].item()) < 1e-6


def test_a_square_only_fit_keeps_its_exact_square_solution():
    """Batches all at the reference size give the plain per-position fit, bit for bit as before buckets."""
    pairs = _pairs(6, seed=8)
    bridge = build_bridge("scalar_bias", SCHED, C, SIZES)
    moments = fit_closed_form(bridge, pairs)
    assert sorted(k for k in moments if k.startswith("1.")) == ["1.8x8.n", "1.8x8.su", "1.8x8.sy", "1.uu", "1.uy"]
    n, su, sy = moments["1.8x8.n"], moments["1.8x8.su"], moments["1.8x8.sy"]
    a = (moments["1.uy"] - (su * sy).sum() / n) / (moments["1.uu"] - (su * su).sum() / n)
    assert bridge.scale[0].item() == a.float().item()
    assert torch.equal(bridge.bias[0], ((sy - a * su) / n).float())


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


SIZED_ALL_REDUCE_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_bridges import _sized_pairs, SMOOTH_MAP, SCHED, SIZES, C
    from nami.bridges import build_bridge, fit_closed_form
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    shapes = [[(8, 8), (4, 16)], [(16, 4), (6, 10), (4, 16)]][rank]  # sizes rank 1 saw and rank 0 did not
    bridge = build_bridge("scalar_bias", SCHED, C, SIZES)
    fit_closed_form(bridge, _sized_pairs(shapes, 0.7, SMOOTH_MAP, seed=rank, noise=0.5))
    if rank == 0:
        torch.save(bridge.state_dict(), {out!r})
    dist.destroy_process_group()
    """
)


def test_ranks_that_saw_different_sizes_fit_what_one_process_fits(tmp_path):
    out = tmp_path / "rank0.pt"
    script = tmp_path / "fit.py"
    script.write_text(SIZED_ALL_REDUCE_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    single = build_bridge("scalar_bias", SCHED, C, SIZES)
    fit_closed_form(single, _sized_pairs([(8, 8), (4, 16)], 0.7, SMOOTH_MAP, seed=0, noise=0.5)
                    + _sized_pairs([(16, 4), (6, 10), (4, 16)], 0.7, SMOOTH_MAP, seed=1, noise=0.5))  # fmt: skip
    distributed = torch.load(out, weights_only=True)
    for name, value in single.state_dict().items():
        assert torch.allclose(distributed[name], value, atol=1e-6), name


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
