"""Data and noise pyramids, Up/Down, and Pyramid Flow's block noise."""

from __future__ import annotations

import pytest
import torch

from nami.flow import block_noise, data_pyramid, down, noise_pyramid, up


def test_noise_pyramid_levels_are_white_unit_variance_and_nested_exactly():
    g = torch.Generator().manual_seed(0)
    n = torch.randn(64, 4, 64, 64, generator=g)
    levels = noise_pyramid(n, 3)
    assert [lvl.shape[-1] for lvl in levels] == [16, 32, 64]
    assert levels[-1] is n
    for k in range(2):
        # level k equals 2 x pool(level k+1), bit for bit
        assert torch.equal(levels[k], 2.0 * torch.nn.functional.avg_pool2d(levels[k + 1], 2))
    for lvl in levels:
        assert abs(lvl.var().item() - 1.0) < 0.01 and abs(lvl.mean().item()) < 0.01
        # white: neighbouring values uncorrelated
        corr = (lvl[..., :, 1:] * lvl[..., :, :-1]).mean().item()
        assert abs(corr) < 0.01


def test_data_pyramid_is_repeated_average_pooling():
    x = torch.randn(2, 3, 32, 32)
    levels = data_pyramid(x, 3)
    assert [lvl.shape[-1] for lvl in levels] == [8, 16, 32]
    assert torch.allclose(levels[0], x.reshape(2, 3, 8, 4, 8, 4).mean(dim=(3, 5)), atol=1e-6)
    assert torch.allclose(levels[0].mean(), x.mean(), atol=1e-6)  # pooling preserves the mean


def test_up_is_nearest_and_down_inverts_it():
    x = torch.randn(1, 2, 4, 4)
    u = up(x)
    assert u.shape[-1] == 8 and torch.equal(u[..., ::2, ::2], x) and torch.equal(u[..., 1::2, 1::2], x)
    assert torch.equal(down(u), x)


def test_block_noise_covariance():
    gamma = 1 / 3
    n = block_noise((20000, 1, 8, 8), gamma, torch.Generator().manual_seed(1))
    # every 2x2 block as a 4-vector (row-major inside the block)
    blocks = n.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 4)
    empirical = blocks.T @ blocks / blocks.shape[0]
    expected = (1 + gamma) * torch.eye(4) - gamma * torch.ones(4, 4)
    # 320k blocks: the standard error of each entry is about 0.003, so 0.02 is > 6 sigma
    assert torch.allclose(empirical, expected, atol=0.02), empirical
    # distinct blocks are independent
    a, b = n[..., 0:2, 0:2].reshape(-1, 4), n[..., 0:2, 2:4].reshape(-1, 4)
    assert (a.T @ b / a.shape[0]).abs().max() < 0.03


def test_block_noise_covariance_other_gamma():
    gamma = 0.2
    n = block_noise((20000, 1, 4, 4), gamma, torch.Generator().manual_seed(2))
    blocks = n.reshape(-1, 1, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    empirical = blocks.T @ blocks / blocks.shape[0]
    expected = (1 + gamma) * torch.eye(4) - gamma * torch.ones(4, 4)
    assert torch.allclose(empirical, expected, atol=0.03), empirical


def test_detail_noise_is_the_part_of_white_noise_that_up_cannot_carry():
    from nami.flow import detail_noise

    d = detail_noise((20000, 1, 4, 4), torch.Generator().manual_seed(3))
    assert down(d).abs().max() < 1e-6  # every 2x2 block sums to zero
    blocks = d.reshape(-1, 1, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    empirical = blocks.T @ blocks / blocks.shape[0]
    assert torch.allclose(empirical, torch.eye(4) - torch.ones(4, 4) / 4, atol=0.02), empirical
    # white noise = its coarse part + independent detail
    n = torch.randn(20000, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    rebuilt = up(down(n)) + detail_noise(n.shape, torch.Generator().manual_seed(5))
    assert abs(rebuilt.var().item() - 1) < 0.01
    assert abs((rebuilt[..., 0, 0] * rebuilt[..., 0, 1]).mean().item()) < 0.02  # neighbours uncorrelated


def test_seeded_randn_gives_each_row_its_own_generator():
    from nami.flow import seeded_randn

    rows = seeded_randn((3, 2, 4, 4), [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    alone = seeded_randn((1, 2, 4, 4), torch.Generator().manual_seed(6))
    assert torch.equal(rows[1:2], alone)  # row 1 depends on its seed only, not on its batch
    batch = block_noise((2, 1, 4, 4), 1 / 3, [torch.Generator().manual_seed(s) for s in (1, 2)])
    single = block_noise((1, 1, 4, 4), 1 / 3, torch.Generator().manual_seed(2))
    assert torch.allclose(batch[1:], single)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        seeded_randn((3, 1, 2, 2), [torch.Generator(), torch.Generator()])
