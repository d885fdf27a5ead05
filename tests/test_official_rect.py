"""The oracle of test_official.py on rectangular latents: per stage, the kit's network on an h != w latent equals
diffusers' FluxTransformer2DModel fed the release's position ids (0, row, col) for that grid
(`FluxPipeline._prepare_latent_image_ids`), to the same tolerance as the square oracle."""

from __future__ import annotations

import pytest
import torch

from nami.artifacts.convert import official_transformer_to_kit
from nami.config import load
from nami.config.buckets import stage_latent_shapes
from nami.models import build_model
from nami.models.layers import image_positions

from .official_fixtures import OFFICIAL, POOLED_DIM, TEXT_DIM, TINY, random_flux
from .test_official import ORACLE_ATOL, _flux_output


@pytest.fixture(scope="module")
def kit_and_release():
    cfg = load(OFFICIAL, TINY)
    state = random_flux(seed=5).state_dict()
    model = build_model(cfg).eval()
    model.load_state_dict(official_transformer_to_kit(cfg, state))
    return cfg, model, state


# the tiny release config's grid is 8 px (pixels, patch 2, 3 stages): stage 0 of 24 x 48 is a 3 x 6 token grid,
# of 40 x 16 a 5 x 2 one (odd counts, both orientations)
@pytest.mark.parametrize("height, width", [(24, 48), (40, 16)])
@torch.no_grad()
def test_every_stage_matches_diffusers_flux_on_a_rectangular_latent(kit_and_release, height, width):
    cfg, model, state = kit_and_release
    g = torch.Generator().manual_seed(7)
    states, pooled = torch.randn(2, 7, TEXT_DIM, generator=g), torch.randn(2, POOLED_DIM, generator=g)
    t = torch.tensor([0.91, 0.2])
    diffs = []
    for k, (h, w) in enumerate(stage_latent_shapes(cfg, height, width)):
        assert h != w
        z = torch.randn(2, 3, h, w, generator=g)
        ours = model(z, t * 1000, states, None, pooled, stage=k)
        theirs = _flux_output(state, cfg.model.stage_depths[k], z, t, states, pooled)
        assert ours.shape == theirs.shape == z.shape
        assert theirs.std() > 0.3  # random adaLN and head: far from the zero-init identity
        diffs.append((ours - theirs).abs().max().item())
    print(f"{height}x{width}: max abs difference per stage:", diffs)
    assert max(diffs) <= ORACLE_ATOL, diffs


@torch.no_grad()
def test_transposing_the_latent_is_not_the_same_network_input(kit_and_release):
    """Rows and columns carry different rotary frequencies on the release's axes: the output of a transposed
    latent is not the transposed output (so a row/column mix-up in the ids could not pass the oracle unseen)."""
    cfg, model, _ = kit_and_release
    g = torch.Generator().manual_seed(8)
    states, pooled = torch.randn(1, 7, TEXT_DIM, generator=g), torch.randn(1, POOLED_DIM, generator=g)
    z = torch.randn(1, 3, 12, 4, generator=g)
    t = torch.tensor([500.0])
    out = model(z, t, states, None, pooled, stage=2)
    flipped = model(z.transpose(-1, -2), t, states, None, pooled, stage=2).transpose(-1, -2)
    assert (out - flipped).abs().max() > 1e-3


def test_image_positions_are_the_release_ids_of_a_rectangular_grid():
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    ids = FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32)
    assert torch.equal(ids[:, 1:].long(), image_positions(3, 5))
    assert torch.equal(ids[:, 0], torch.zeros(15))
