"""Looking at stages: beside each stage's end, the clean image predicted at its last model call,
x0 = z - sigma v (global sigma, global velocity n - x = v / (c_k - e_k)), in the trace, in decoded results and
in `nami sample --stages` strips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nami.config import load
from nami.flow import initial_noise
from nami.sampling.images import CAPTION_WIDTH, TITLE_HEIGHT, captioned_grid, stage_panels, write_samples
from nami.sampling.pipeline import Pipeline
from nami.models import model_fn
from nami.parts import build_parts

from .helpers import EXPERIMENTS, LEARNED_TEXT

GUIDANCE = 3.0
STEPS = [3, 2, 2]


def sample_recorded(overrides: list[str], prompts: list[str], seeds: list[int]):
    """A random tiny model (its zero-initialised head made non-zero) sampled with guidance, every network call
    recorded as (stage, input, output): (cfg, parts, trace, calls)."""
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "bridge.kind=identity", *overrides])
    parts = build_parts(cfg, fitted=False)
    torch.nn.init.normal_(parts.model.final.linear.weight, std=0.05)
    calls = []
    network = model_fn(parts.model)

    def recording(z, t, k, cond):
        out = network(z, t, k, cond)
        calls.append((k, z.clone(), out.clone()))
        return out

    text = parts.text_encoder(prompts + [""] * len(prompts))
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.cat([initial_noise((1, 3, 32, 32), 3, g) for g in generators])
    with torch.no_grad():
        trace = parts.flow.sample(recording, noise, text, STEPS, GUIDANCE, generators, keep_stages=True)
    return cfg, parts, trace, calls


@pytest.fixture(scope="module")
def recorded():
    torch.manual_seed(0)
    return sample_recorded([], ["a red circle", "two blue squares"], [0, 1])


def by_hand(flow, calls, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 at stage k's last model call from its recorded input and output, with the schedule's numbers:
    (x0, the guided network output)."""
    _, zz, out = [c for c in calls if c[0] == k][-1]
    z = zz.chunk(2)[0]  # [z; z]: conditional then unconditional half
    out_c, out_u = out.float().chunk(2)
    guided = out_u + GUIDANCE * (out_c - out_u)
    s_local = flow.grid(k, STEPS[k]).sigmas[-2]  # the last call's local sigma (the step then goes to 0)
    c, e = flow.schedule.start_sigmas[k], flow.schedule.end_sigmas[k]
    sigma = e + s_local * (c - e)
    return z - sigma * guided / (c - e), guided  # velocity prediction: the output is the local velocity


@pytest.mark.parametrize("k", [0, 1])
def test_stage_prediction_is_z_minus_sigma_v_at_the_last_call(recorded, k):
    cfg, parts, trace, calls = recorded
    assert len([c for c in calls if c[0] == k]) == STEPS[k]
    x0, guided = by_hand(parts.flow, calls, k)
    assert torch.allclose(trace.stage_predictions[k], x0, atol=1e-5)
    # and it is not the stage's end: at sigma 0.667 / 0.334 the end is still mostly noise
    assert (trace.stage_predictions[k] - trace.stage_ends[k]).abs().mean() > 0.05


def test_x_prediction_previews_are_the_guided_network_output():
    """With flow.prediction=data the network outputs x_hat and the velocity is built from it; the preview must
    give x_hat back (a reference that does not use the x0 equation)."""
    _, parts, trace, calls = sample_recorded(["flow.prediction=data"], ["a red circle"], [0])
    for k in range(3):
        _, guided = by_hand(parts.flow, calls, k)
        assert torch.allclose(trace.stage_predictions[k], guided, atol=1e-4), k


def test_decoded_previews_and_the_stages_strip(recorded, tmp_path):
    """Pipeline results hold the decoded, full-size previews; `nami sample --stages` strips show them beside
    each stage's end, with titles."""
    cfg, parts, _, _ = recorded
    pipe = Pipeline.from_config(parts, cfg)
    prompts = ["a red circle", "two blue squares"]
    result = pipe.sample(prompts, STEPS, GUIDANCE, seed=0, keep_stages=True)
    for k in range(3):
        z = result.trace.stage_predictions[k]
        while z.shape[-1] < cfg.latent_size:  # nearest-neighbour enlargement
            z = z.repeat_interleave(2, -1).repeat_interleave(2, -2)
        assert torch.equal(result.stages.stage_predictions[k], z.clamp(-1, 1))  # the pixel autoencoder decodes as is
    panels = stage_panels(result, 1)
    assert [t for t, _ in panels] == ["stage 0 end", "stage 0 x0 pred", "stage 1 start", "stage 1 end",
                                      "stage 1 x0 pred", "stage 2 start", "stage 2 (final)"]  # fmt: skip
    assert torch.equal(panels[1][1], result.stages.stage_predictions[0][1])
    assert torch.equal(panels[4][1], result.stages.stage_predictions[1][1])
    written = write_samples(result, prompts, tmp_path, stages=True)
    strip = Image.open(next(p for p in written if p.name == "001-two-blue-squares-stages.png"))
    panel = 128 + 2  # 32 px enlarged 4x, make_grid's padding
    assert strip.size == (CAPTION_WIDTH + 7 * panel + 2, TITLE_HEIGHT + panel + 2)


def test_captioned_grid_keeps_the_images_and_writes_captions_beside_them():
    rows = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    grid = captioned_grid(rows, ["a red circle", "two blue squares"], ["a", "b", "c"], cell=32)
    plain = captioned_grid(rows, ["", ""], cell=32)
    assert grid.shape == (3, TITLE_HEIGHT + 2 * 34 + 2, CAPTION_WIDTH + 3 * 34 + 2)
    assert torch.equal(grid[:, TITLE_HEIGHT:, CAPTION_WIDTH:], plain[:, :, CAPTION_WIDTH:])  # the images themselves untouched
    ink = np.asarray(grid[:, TITLE_HEIGHT:, :CAPTION_WIDTH].mean(0)) < 0.5
    assert ink[:34].sum() > 20 and ink[34:].sum() > 20  # a caption beside each row
    assert (np.asarray(plain[:, :, :CAPTION_WIDTH]) == 1).all()
