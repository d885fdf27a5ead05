"""The flow on a rectangular grid (an aspect-ratio bucket): pyramids, the training loss through the real network,
bridge pairs and progressive sampling keep each stage's (height, width)."""

from __future__ import annotations

import torch

from nami.config import load
from nami.config.buckets import stage_latent_shapes
from nami.flow import data_pyramid, noise_pyramid
from nami.models import model_fn
from nami.parts import build_parts

from .helpers import EXPERIMENTS, LEARNED_TEXT


def test_pyramids_of_a_rectangle_keep_white_unit_variance_noise():
    n = torch.randn(256, 3, 16, 64, generator=torch.Generator().manual_seed(0))
    levels = noise_pyramid(n, 3)
    assert [tuple(lvl.shape[-2:]) for lvl in levels] == [(4, 16), (8, 32), (16, 64)]
    for lvl in levels:
        assert abs(lvl.var().item() - 1.0) < 0.02
        assert abs((lvl[..., 1:, :] * lvl[..., :-1, :]).mean().item()) < 0.02  # white down the columns too
    x = torch.randn(2, 3, 48, 16)
    assert torch.allclose(data_pyramid(x, 3)[0], x.reshape(2, 3, 12, 4, 4, 4).mean(dim=(3, 5)), atol=1e-6)


def test_training_loss_bridge_pairs_and_sampling_on_a_bucket():
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "data.buckets=auto"])
    parts = build_parts(cfg, fitted=False)
    flow, text = parts.flow, parts.text_encoder(["a red circle", "two squares"])
    shapes = stage_latent_shapes(cfg, 16, 64)
    x = torch.rand(2, 3, 16, 64) * 2 - 1
    g = torch.Generator().manual_seed(0)
    groups = [(k, flow.stage_latents(x, k)) for k in range(3)]
    assert [tuple(z.shape[-2:]) for _, z in groups] == shapes
    losses = flow.training_losses(model_fn(parts.model), groups, [text] * 3, g)
    assert all(torch.isfinite(loss) and loss > 0 for loss in losses.losses)
    losses.total.backward()  # gradients flow through every stage's rectangular grid
    assert parts.model.final.linear.weight.grad.abs().sum() > 0  # (the zero-initialised head learns first)
    pairs = flow.bridge_pairs(x, g)
    assert [(tuple(u.shape[-2:]), tuple(y.shape[-2:]), k) for u, y, k in pairs] == [
        (shapes[1], shapes[1], 1), (shapes[2], shapes[2], 2)]
    with torch.no_grad():
        noise = torch.randn(2, 3, *shapes[0], generator=g)
        trace = flow.sample(model_fn(parts.model), noise, text, [1, 1, 1], keep_stages=True)
    assert [tuple(z.shape[-2:]) for z in trace.stage_ends] == shapes
