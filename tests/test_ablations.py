"""Every ablation file composes over tiny.yaml, trains a step and samples."""

from __future__ import annotations

import pytest
import torch

from nami.bridges import bridge_from_config
from nami.config import load
from nami.sampling import Pipeline
from nami.lit.runner import pretrain_bridges, train

from .helpers import EXPERIMENTS, LEARNED_TEXT

ABLATIONS = sorted((EXPERIMENTS / "ablations").glob("*.yaml"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from data_modules.synth import write_shapes

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num=64, shards=2, resolution=32)
    return root


def test_the_ablation_set_is_complete():
    names = {p.stem for p in ABLATIONS}
    bridges = {f"bridge_{k}" for k in ("scalar_bias", "conv1x1", "mlp", "cnn", "renoise", "identity")}
    others = {"uniform_baseline", "no_nesting", "sequential_training", "windows_2_1_1", "layers_back_loaded",
              "ratio_schedule_on", "ratio_schedule_off"}  # fmt: skip
    assert bridges | others <= names
    for path in ABLATIONS:  # small overrides of one base, not copies
        text = path.read_text()
        assert "base: ../tiny.yaml" in text and len(text.splitlines()) <= 16, path.name


def test_each_ablation_is_a_distinct_arm():
    """No two files resolve to the same config; one equal to tiny.yaml must say it is the reference arm."""
    from nami.config import to_dict

    def resolved(path):
        out = to_dict(load(path))
        out.pop("name")
        return out

    tiny, seen = resolved(EXPERIMENTS / "tiny.yaml"), {}
    for path in ABLATIONS:
        config = resolved(path)
        if config == tiny:
            assert "reference arm" in path.read_text().splitlines()[0], f"{path.stem} silently equals tiny.yaml"
            continue
        twin = next((name for name, other in seen.items() if other == config), None)
        assert twin is None, f"{path.stem} resolves to the same config as {twin}"
        seen[path.stem] = config


@pytest.mark.slow
@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_trains_a_step_and_samples(path, tmp_path, shapes):
    cfg = load(path, [
        *LEARNED_TEXT, f"data.shards={shapes}/*.tar", "data.batch_size=6", "data.num_workers=0",
        f"trainer.default_root_dir={tmp_path}", "trainer.accelerator=cpu", "trainer.max_steps=1",
        "bridge.fit_batches=2", "bridge.heldout_batches=1", "bridge.sgd_steps=2", "log.sample_prompts=[a red circle]",
    ])  # fmt: skip
    if bridge_from_config(cfg).learnable:
        pretrain_bridges(cfg)
    run = train(cfg)
    pipeline = Pipeline.from_weights(cfg, run)
    steps = [1] * cfg.num_stages
    result = pipeline.sample(["a red circle"], steps, cfg.sampler.guidance, keep_stages=True)
    assert result.images.shape == (1, 3, cfg.resolution, cfg.resolution)
    assert torch.isfinite(result.images).all() and len(result.stages.stage_ends) == cfg.num_stages
