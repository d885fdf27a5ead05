"""Inference from training outputs: weights files, `nami sample`, `nami eval`, `nami bench`."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from PIL import Image

from nami.config import ConfigError, load
from nami.artifacts.weights import read_weights
from nami.sampling import Pipeline

from .helpers import EXPERIMENTS, nami_command, train_tiny_run

PROMPTS = ["a photo of a red circle", "a photo of two squares"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained for 3 steps: (config overrides, run directory, config)."""
    args, cfg, run_dir = train_tiny_run(tmp_path_factory.mktemp("run"), ["sampler.uniform_steps=6",
                                                                          "eval.batch_size=12"])  # fmt: skip
    return args, run_dir, cfg


def test_weights_sources_agree_and_prefer_ema(run):
    _, run_dir, _ = run
    file, ckpt = read_weights(run_dir / "weights.safetensors"), read_weights(run_dir / "checkpoints" / "step00000003.ckpt")
    from_file, from_ckpt, from_dir = file.tensors, ckpt.tensors, read_weights(run_dir).tensors
    assert file.directory == ckpt.directory == run_dir.path
    assert from_file.keys() == from_ckpt.keys() == from_dir.keys()
    assert all(torch.equal(from_file[k], from_ckpt[k].float()) for k in from_file)  # the EMA weights, not raw
    raw = torch.load(run_dir / "checkpoints" / "step00000003.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(raw[f"model.{k[6:]}"], from_ckpt[k]) for k in from_ckpt if k.startswith("model."))
    with pytest.raises(ConfigError, match="--ckpt"):
        read_weights(run_dir / "nothing.ckpt")


def test_sampling_is_seeded_per_prompt(run):
    _, run_dir, cfg = run
    pipeline = Pipeline.from_weights(cfg, run_dir)
    both = pipeline.sample(PROMPTS, seed=7, keep_stages=True)
    alone = pipeline.sample(PROMPTS[1:], seed=8)  # prompt 1 had seed 7 + 1
    assert torch.allclose(both.images[1], alone.images[0], atol=1e-5)
    assert [s.shape[-1] for s in both.stages.stage_ends] == [32, 32, 32]  # upsampled for viewing
    assert not torch.allclose(both.images[0], pipeline.sample(PROMPTS[:1], seed=9).images[0])
    batched = pipeline.sample(PROMPTS, seed=7, batch_size=1)  # an image depends on its seed, not on its batch
    assert torch.allclose(batched.images, both.images, atol=1e-5)


def test_initial_latents_replace_the_seeds_noise(run):
    _, run_dir, cfg = run
    pipeline = Pipeline.from_weights(cfg, run_dir)
    seeded = pipeline.sample(PROMPTS, seed=3)
    noise = pipeline.initial_noise(pipeline.generators([3, 4]), cfg.num_stages)  # stage 0's side
    full = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # full size: pooled like a draw
    assert torch.equal(pipeline.sample(PROMPTS, seed=3, latents=noise).images, seeded.images)
    from_full = pipeline.sample(PROMPTS, seed=3, latents=full).trace
    assert from_full.final.shape == seeded.trace.final.shape and not torch.equal(from_full.final, seeded.trace.final)
    with pytest.raises(ConfigError, match="latents"):
        pipeline.sample(PROMPTS, latents=torch.zeros(2, 3, 12, 12))


def test_uniform_mode_is_the_same_module_with_a_switch(run):
    args, run_dir, _ = run
    cfg = load(EXPERIMENTS / "tiny.yaml", [*args, "sampler.mode=uniform"])
    pipeline = Pipeline.from_weights(cfg, run_dir)
    calls = []
    pipeline.model.register_forward_hook(lambda m, a, kw, out: calls.append(a[0].shape[-1]), with_kwargs=True)
    pipeline.sample(PROMPTS[:1])
    assert calls == [32] * cfg.sampler.uniform_steps  # one stage, full resolution throughout


def test_nami_sample_writes_images_and_stage_strips(run, tmp_path):
    args, run_dir, _ = run
    out = tmp_path / "samples"
    result = subprocess.run(nami_command("sample", EXPERIMENTS / "tiny.yaml", *args, "--ckpt", run_dir,
                                         *[a for p in PROMPTS for a in ("--prompt", p)], "--stages", "--out", out,
                                         "--steps", "1,1,1"), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = out / "0001"  # each call writes a fresh numbered directory
    assert Image.open(out / "000-a-photo-of-a-red-circle.png").size == (32, 32)
    strip = Image.open(out / "001-a-photo-of-two-squares-stages.png")
    assert strip.width > 4 * strip.height  # stage 0 end, then start and end of stages 1 and 2
    assert (out / "grid.png").is_file()


def test_nami_eval_reports_one_json_object(run):
    args, run_dir, _ = run
    result = subprocess.run(nami_command("eval", EXPERIMENTS / "tiny.yaml", *args, "--ckpt", run_dir, "--num", "2",
                                         "eval.batch_size=5", "--json"), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout)  # three batches, yet stdout is the one JSON object (no progress bar)
    categories = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    assert all(0.0 <= scores[c] <= 1.0 for c in categories) and scores["images"] == 12
    assert scores["overall"] == pytest.approx(sum(scores[c] for c in categories) / 6)
    assert any("FID skipped" in n for n in scores["notices"])


def test_nami_bench_sampling_reports_ratios_beside_the_flop_model(run):
    args, run_dir, _ = run
    result = subprocess.run(nami_command("bench", "sampling", EXPERIMENTS / "tiny.yaml", *args, "--batch", "2",
                                         "--repeats", "1", "--json"), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    bench = json.loads(result.stdout)
    for mode in ("progressive", "no_nesting"):
        assert bench[mode]["measured_ratio"] > 0 and 0 < bench[mode]["predicted_ratio"] < 1
    assert bench["progressive"]["predicted_ratio"] < bench["no_nesting"]["predicted_ratio"]
    assert bench["uniform_s"] > 0 and bench["bridge_transition_s"] > 0 and bench["renoise_transition_s"] > 0
