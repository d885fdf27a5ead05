"""Nested MM-DiT: block counts per stage, gradients, bf16, masking, RoPE, patching."""

from __future__ import annotations

import pytest
import torch

from nami.config import load
from nami.models import build_model, build_text_encoder
from nami.models.layers import apply_rope, image_positions, rope_angles
from nami.perf import parameter_counts

from .helpers import EXPERIMENTS, LEARNED_TEXT


def _randomize(model):
    """Replace the zero inits (adaLN-Zero, head) so every used parameter gets a non-zero gradient."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def _inputs(cfg, k, batch=2):
    encoder = build_text_encoder(cfg.text_encoder)
    with torch.no_grad():
        emb = encoder(["a red circle", "two blue squares left of a green triangle"][:batch])
    side = cfg.stage_latent_sizes()[k]
    return torch.randn(batch, 3, side, side), torch.rand(batch) * 1000, emb


def test_stage_k_runs_exactly_its_depth(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    calls = []
    for i, block in enumerate(model.blocks()):
        block.register_forward_hook(lambda mod, args, out, i=i: calls.append(i))
    for k, depth in enumerate(tiny_cfg.model.stage_depths):
        calls.clear()
        x, t, emb = _inputs(tiny_cfg, k)
        model(x, t, emb.states, emb.mask, emb.pooled, stage=k)
        assert calls == list(range(depth))
    calls.clear()
    x, t, emb = _inputs(tiny_cfg, 0)
    model(x, t, emb.states, emb.mask, emb.pooled, stage=None)  # sampling without nesting: every block
    assert calls == list(range(model.num_blocks))
    flat = build_model(load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "model.nesting=false"]))
    assert flat.stage_depths == [flat.num_blocks] * 3  # the no-nesting ablation trains every block everywhere


@pytest.mark.parametrize("k", [0, 1, 2])
def test_bf16_forward_backward_and_unused_parameters_get_no_gradient(tiny_cfg, k):
    model = _randomize(build_model(tiny_cfg))
    x, t, emb = _inputs(tiny_cfg, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = model(x, t, emb.states, emb.mask, emb.pooled, stage=k)
    assert v.shape == x.shape and v.dtype == torch.bfloat16
    loss = (v.float() - x).pow(2).mean()
    assert torch.isfinite(loss)
    loss.backward()
    used = {id(p) for p in model.stage_parameters(k)}
    for name, p in model.named_parameters():
        if id(p) not in used:
            assert p.grad is None, f"{name} is not used by stage {k} but got a gradient"
    depth = tiny_cfg.model.stage_depths[k]
    trained = [model.img_in, model.txt_in, model.time_in, model.vector_in, *model.blocks()[:depth], model.final]
    for module in trained:  # every module the stage runs learns from its loss
        assert sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None) > 0, module
    assert all(p.grad is None for block in model.blocks()[depth:] for p in block.parameters())


def test_zero_initialised_head_predicts_zero(tiny_cfg):
    model = build_model(tiny_cfg)
    x, t, emb = _inputs(tiny_cfg, 2)
    assert torch.equal(model(x, t, emb.states, emb.mask, emb.pooled, stage=2), torch.zeros_like(x))


def test_padding_tokens_are_masked_out(tiny_cfg):
    model = _randomize(build_model(tiny_cfg)).eval()
    x, t, emb = _inputs(tiny_cfg, 1)
    garbage = emb.states.clone()
    garbage[~emb.mask] = torch.randn_like(garbage[~emb.mask]) * 10  # change only padded positions
    a = model(x, t, emb.states, emb.mask, emb.pooled, stage=1)
    b = model(x, t, garbage, emb.mask, emb.pooled, stage=1)
    assert torch.allclose(a, b, atol=1e-5)
    c = model(x, t, garbage, torch.ones_like(emb.mask), emb.pooled, stage=1)
    assert not torch.allclose(a, c, atol=1e-3)  # without the mask the garbage matters


def test_patchify_round_trip(tiny_cfg):
    model = build_model(tiny_cfg)
    x = torch.randn(2, 3, 16, 32)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 4 * 8, 3 * 16)
    assert torch.equal(model.unpatchify(tokens, 4, 8), x)
    assert torch.equal(tokens[0, 1], x[0, :, 0:4, 4:8].reshape(-1))  # row-major, channel-first patches


def test_rope_scores_depend_only_on_relative_position():
    head_dim = 32
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def score(pq, pk):
        aq = rope_angles(torch.tensor([pq]), head_dim)
        ak = rope_angles(torch.tensor([pk]), head_dim)
        return (apply_rope(q, aq) * apply_rope(k, ak)).sum().item()

    assert score((3, 5), (1, 2)) == pytest.approx(score((7, 9), (5, 6)), abs=1e-5)
    assert score((3, 5), (1, 2)) != pytest.approx(score((3, 5), (2, 2)), abs=1e-3)
    zero = rope_angles(torch.zeros(1, 2, dtype=torch.long), head_dim)  # text tokens sit at (0, 0)
    assert torch.equal(apply_rope(q, zero), q)
    assert image_positions(2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_meta_parameter_count_matches_real_model(tiny_cfg):
    counts = parameter_counts(tiny_cfg)
    model = build_model(tiny_cfg)
    assert counts["params_total"] == sum(p.numel() for p in model.parameters())
    assert counts["params_per_stage"][-1] == counts["params_total"]
    assert counts["params_per_stage"] == sorted(counts["params_per_stage"])
