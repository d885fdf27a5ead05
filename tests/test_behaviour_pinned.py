"""Behaviour pinned across refactors: the loss of one training step and progressive / no-nesting / uniform
samples of the tiny config, for the default, detail-noise, renoise and x-prediction flows.

`pinned/flow_owner_before.json` was computed with the code as it stood before `PyramidFlow` took over the flow
math (the commit before it landed), from the same weights, batch and seeds as built here. Everything runs in
float64 so the figures do not depend on the CPU's float32 kernels; a change of the math moves them by far more
than the tolerance.
"""

from __future__ import annotations

import json

import pytest
import torch

from nami.config import load
from nami.flow import data_pyramid
from nami.lit.joint_flow import JointFlowModule
from nami.parts import build_parts

from .helpers import EXPERIMENTS, LEARNED_TEXT, REPO

PINNED = json.loads((REPO / "tests" / "pinned" / "flow_owner_before.json").read_text())
VARIANTS = {
    "default": ["bridge.detail_noise=false"],
    "detail_noise": ["bridge.detail_noise=true"],
    "renoise": ["bridge.kind=renoise"],
    "data_prediction": ["bridge.detail_noise=false", "flow.prediction=data"],
}
PROMPTS = ["a red circle", "two blue squares"]
ATOL = 1e-6


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every weight off its initial value (the zero-initialised head would make every sample its noise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _batch(cfg):
    from data_modules.collate import StageBatch

    g = torch.Generator().manual_seed(7)
    k = cfg.num_stages
    captions = [["a red circle", "two blue squares"], ["a green triangle", ""], ["three yellow circles", "a cyan square"]]
    images = [data_pyramid(torch.rand(2, 3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1, k)[s].contiguous()
              for s in range(k)]  # fmt: skip
    return StageBatch(images, captions, [["a", "b"]] * k, [[{}, {}]] * k, [[0, 0]] * k, list(range(k)), 0, [1.0] * k, True)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _summary(images: torch.Tensor) -> dict:
    flat = images.flatten()
    return {"mean": images.mean().item(), "abs_mean": images.abs().mean().item(), "sq_mean": images.pow(2).mean().item(),
            "first": flat[:4].tolist(), "last": flat[-4:].tolist()}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_training_loss_and_samples_are_unchanged(variant, float64):
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, *VARIANTS[variant], "sampler.guidance=3.0"])
    torch.manual_seed(0)
    parts = build_parts(cfg, fitted=False)
    _perturb(parts.bridge, 1)
    module = JointFlowModule(cfg, parts)
    _perturb(module.model, 2)
    _perturb(module.text_encoder, 3)
    pinned = PINNED[variant]

    losses = module.stage_losses(_batch(cfg))
    assert losses.total.item() == pytest.approx(pinned["loss"], abs=ATOL)
    assert [x.item() for x in losses.losses] == pytest.approx(pinned["stage_losses"], abs=ATOL)

    pipeline = module.pipeline(use_ema=False)
    for mode in ("progressive", "no_nesting", "uniform"):
        steps = [6] if mode == "uniform" else [2, 2, 2]
        images = pipeline.sample(PROMPTS, steps, 3.0, seed=[5, 6], mode=mode).images
        got, want = _summary(images), pinned[mode]
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=ATOL), (mode, key)
