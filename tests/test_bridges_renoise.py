"""Pyramid Flow's renoise jump (the `renoise` bridge kind): coefficients, seeded sampling, the corrected start."""

from __future__ import annotations

import pytest
import torch

from nami.bridges import RenoiseBridge, build_bridge
from nami.flow import PyramidSchedule, down, stage_endpoints, up

THIRDS = PyramidSchedule()
SIZES = [8, 16, 32]


def test_renoise_coefficients_for_thirds():
    assert THIRDS.renoise_coefficients(1) == pytest.approx((0.600, 0.693), abs=1e-3)
    assert THIRDS.renoise_coefficients(2) == pytest.approx((0.750, 0.434), abs=1e-3)
    with pytest.raises(IndexError):
        THIRDS.renoise_coefficients(0)


def test_renoise_coefficients_cancel_the_block_covariance():
    # alpha Up(end_(k-1)) + beta n': data weight alpha (1 - e_(k-1)) must be 1 - c_k. Noise covariance per
    # 2x2 block: (alpha e_(k-1))^2 11^T from Up, beta^2 ((1 + gamma) I - gamma 11^T) from n'; the 11^T parts
    # cancel and beta^2 (1 + gamma) I = c_k^2 I is white noise at the corrected start.
    for k in (1, 2):
        alpha, beta = THIRDS.renoise_coefficients(k)
        e_prev, c = THIRDS.end_sigmas[k - 1], THIRDS.start_sigmas[k]
        assert alpha * (1 - e_prev) == pytest.approx(1 - c, abs=1e-12)
        assert beta**2 * (1 + THIRDS.gamma) == pytest.approx(c**2, abs=1e-12)
        assert beta**2 * THIRDS.gamma == pytest.approx((alpha * e_prev) ** 2, abs=1e-12)


def test_renoise_lands_on_the_corrected_start():
    """Up of white noise at sigma e_(k-1) (block-constant), plus block noise, is white noise at c_k in law."""
    g = torch.Generator().manual_seed(0)
    for k in (1, 2):
        coarse = THIRDS.end_sigmas[k - 1] * torch.randn(20_000, 1, 4, 4, generator=g)
        jumped = build_bridge("renoise", THIRDS, 1, [2, 4, 8])(up(coarse), k, generator=g)
        assert abs(jumped.std().item() - THIRDS.start_sigmas[k]) < 0.01
        blocks = jumped.unfold(-2, 2, 2).unfold(-2, 2, 2).reshape(-1, 4)
        cov = torch.cov(blocks.T)
        assert torch.allclose(cov, THIRDS.start_sigmas[k] ** 2 * torch.eye(4), atol=0.01)  # white within blocks


def test_renoise_sampling_is_seeded():
    bridge = build_bridge("renoise", THIRDS, 3, SIZES)
    z = torch.randn(1, 3, 16, 16)
    a = bridge(z, 2, generator=torch.Generator().manual_seed(5))
    b = bridge(z, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, bridge(z, 2, generator=torch.Generator().manual_seed(6)))


def test_renoise_training_start_is_pyramid_flows_corrected_start():
    x = torch.randn(2, 3, 8, 8)
    n = torch.randn_like(x)
    start, _ = stage_endpoints(x, n, 1, THIRDS, RenoiseBridge(THIRDS, 3, SIZES))
    c = THIRDS.start_sigmas[1]
    assert torch.allclose(start, c * n + (1 - c) * up(down(x)), atol=1e-6)
