"""Sampling at a height and width (pixels, as diffusers names them): `Pipeline.sample(..., height=, width=)`,
`NamiPipeline`, `nami sample --height --width`, `nami bench sampling` at a non-square bucket, and one-line
refusals of sizes off the stage grid."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from PIL import Image

from nami.config import ConfigError, load
from nami.config.buckets import stage_latent_shapes
from nami.models import forward_cost, predicted_ratio
from nami.parts import build_parts
from nami import NamiPipeline
from nami.sampling import Pipeline

from .helpers import EXPERIMENTS, LEARNED_TEXT, nami_command

PROMPTS = ["a photo of a red circle", "a photo of two squares"]
FAST = [*LEARNED_TEXT, "sampler.steps=[2,2,2]", "sampler.uniform_steps=3", "trainer.accelerator=cpu"]


def _perturbed_parts(cfg, seed: int = 0):
    """Parts with every weight of the model nudged off its zero-initialised head (so samples depend on it)."""
    parts = build_parts(cfg, fitted=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parts.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    for module in (parts.model, parts.text_encoder, parts.bridge):
        module.eval().requires_grad_(False)
    return parts


@pytest.fixture(scope="module")
def tiny():
    cfg = load(EXPERIMENTS / "tiny.yaml", FAST)
    return cfg, Pipeline.from_config(_perturbed_parts(cfg), cfg)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny):
    cfg, pipeline = tiny
    path = tmp_path_factory.mktemp("model") / "dir"
    parts = build_parts(cfg, fitted=False)
    parts.model.load_state_dict(pipeline.model.state_dict())
    NamiPipeline(cfg, parts).save_pretrained(path)
    return path


def test_every_stage_runs_on_the_buckets_grid(tiny):
    cfg, pipeline = tiny
    calls = []
    handle = pipeline.model.register_forward_hook(lambda m, a, out: calls.append(tuple(a[0].shape[-2:])))
    try:
        result = pipeline.sample(PROMPTS, seed=3, height=16, width=64, keep_stages=True)
    finally:
        handle.remove()
    shapes = stage_latent_shapes(cfg, 16, 64)
    assert shapes == [(4, 16), (8, 32), (16, 64)]
    assert calls == [s for s in shapes for _ in range(2)]  # two Euler steps per stage
    assert result.images.shape == (2, 3, 16, 64)
    assert [tuple(z.shape[-2:]) for z in result.trace.stage_ends] == shapes
    assert all(tuple(v.shape[-2:]) == (16, 64) for v in result.stages.stage_ends)  # enlarged for viewing
    alone = pipeline.sample(PROMPTS[1:], seed=4, height=16, width=64)  # prompt 1 had seed 3 + 1
    assert torch.allclose(result.images[1], alone.images[0], atol=1e-5)
    assert result.images.std() > 0.1


def test_the_default_size_is_the_square_resolution(tiny):
    cfg, pipeline = tiny
    default = pipeline.sample(PROMPTS, seed=5).images
    assert torch.equal(default, pipeline.sample(PROMPTS, seed=5, height=32, width=32).images)
    portrait = pipeline.sample(PROMPTS, seed=5, height=48, width=16).images
    assert portrait.shape == (2, 3, 48, 16)


def test_initial_latents_at_a_bucket_replace_the_seeds_noise(tiny):
    cfg, pipeline = tiny
    seeded = pipeline.sample(PROMPTS, seed=3, height=48, width=16)
    noise = pipeline.initial_noise(pipeline.generators([3, 4]), cfg.num_stages, (48, 16))
    assert noise.shape == (2, 3, 12, 4)  # stage 0's grid of the bucket
    assert torch.equal(pipeline.sample(PROMPTS, seed=3, height=48, width=16, latents=noise).images, seeded.images)
    full = torch.randn(2, 3, 48, 16, generator=torch.Generator().manual_seed(0))  # full size: pooled like a draw
    assert pipeline.sample(PROMPTS, seed=3, height=48, width=16, latents=full).images.shape == (2, 3, 48, 16)
    with pytest.raises(ConfigError, match="latents"):
        pipeline.sample(PROMPTS, latents=full)  # a 48 x 16 latent for the default 32 x 32 image


def test_a_size_off_the_grid_names_the_nearest_valid_ones(tiny):
    _, pipeline = tiny
    with pytest.raises(ConfigError) as err:
        pipeline.sample(PROMPTS, height=33)
    assert err.value.key == "height" and "nearest valid: 32 or 48" in str(err.value)
    with pytest.raises(ConfigError) as err:
        pipeline.sample(PROMPTS, width=8)
    assert err.value.key == "width" and "nearest valid: 16" in str(err.value)


def test_scalar_bias_samples_a_bucket_with_its_map_resized(tiny):
    from nami.bridges.linear import resize_map
    from nami.flow import up

    cfg = load(EXPERIMENTS / "tiny.yaml", [*FAST, "bridge.kind=scalar_bias", "bridge.detail_noise=false"])
    parts = _perturbed_parts(cfg)
    with torch.no_grad():
        for bias in parts.bridge.bias:
            bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(1)))
    pipeline = Pipeline.from_config(parts, cfg)
    assert pipeline.sample(PROMPTS[:1], height=16, width=64).images.shape == (1, 3, 16, 64)
    z = torch.randn(1, 3, 4, 16)
    expected = parts.bridge.scale[0] * up(z) + resize_map(parts.bridge.bias[0], (8, 32))
    assert torch.allclose(parts.flow.transition(z, 1), expected)


def test_nami_pipeline_takes_height_and_width(model_dir):
    pipe = NamiPipeline.from_pretrained(model_dir)
    images = pipe(PROMPTS[:1], steps=1, height=16, width=64)
    assert images[0].size == (64, 16)  # PIL: (width, height)
    assert pipe.sample(PROMPTS[:1], steps=1, height=48, width=16).images.shape == (1, 3, 48, 16)
    with pytest.raises(ConfigError, match="height: 40 px is off the stage grid"):
        pipe(PROMPTS[:1], height=40)


def test_nami_sample_writes_images_at_height_and_width(model_dir, tmp_path):
    out = tmp_path / "samples"
    result = subprocess.run(nami_command("sample", "--ckpt", model_dir, "--prompt", PROMPTS[0], "--stages",
                                         "--out", out, "--steps", "1,1,1", "--height", "16", "--width", "64"),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out / "0001" / "000-a-photo-of-a-red-circle.png").size == (64, 16)
    assert (out / "0001" / "000-a-photo-of-a-red-circle-stages.png").is_file()
    bad = subprocess.run(nami_command("sample", "--ckpt", model_dir, "--prompt", PROMPTS[0], "--out",
                                      tmp_path / "never", "--height", "33"), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    err = bad.stderr.strip()
    assert bad.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("nami: error: --height: 33 px is off the stage grid") and "nearest valid: 32 or 48" in err
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_nami_eval_scores_at_a_named_bucket(model_dir, tmp_path):
    """`nami eval --height --width` (or eval.size) samples and scores GenEval-Shapes at that size; the report and
    every kept image say so."""
    args = ["eval", "--ckpt", model_dir, "--num", "1", "--json", "sampler.steps=[1,1,1]", "--save-images"]
    result = subprocess.run(nami_command(*args, "--out", tmp_path / "a", "--height", "16", "--width", "64"),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert (report["height"], report["width"]) == (16, 64) and report["images"] == 6
    assert {Image.open(p).size for p in (tmp_path / "a" / "0001").glob("*.png")} == {(64, 16)}
    same = subprocess.run(nami_command(*args, "--out", tmp_path / "b", "eval.size=[16,64]"), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert same.returncode == 0, same.stderr[-2000:]
    for name in ("00000.png", "00005.png"):  # the key and the flags are one setting: the same images
        assert (tmp_path / "a" / "0001" / name).read_bytes() == (tmp_path / "b" / "0001" / name).read_bytes()


@pytest.mark.parametrize("args, needle", [
    (["--height", "33"], "nami: error: --height: 33 px is off the stage grid"),
    (["eval.size=[16,70]"], "nami: error: eval.size width: 70 px is off the stage grid"),
    (["eval.size=[16]"], "nami: error: eval.size: must be [height, width]"),
])  # fmt: skip
def test_nami_eval_refuses_a_size_off_the_grid_in_one_line(model_dir, tmp_path, args, needle):
    argv = nami_command("eval", "--ckpt", model_dir, "--num", "1", "--save-images", "--out", tmp_path / "never", *args)
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    err = bad.stderr.strip()
    assert bad.returncode == 2 and len(err.splitlines()) == 1 and err.startswith(needle), err
    assert "nearest valid" in err or "[height, width]" in err
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_bench_sampling_at_a_non_square_bucket_counts_that_buckets_flops(tiny):
    from nami.perf.bench import bench_sampling

    cfg, pipeline = tiny
    size = (16, 64)
    report = bench_sampling(cfg, pipeline, batch=1, repeats=1, height=16, width=64)
    assert (report["height"], report["width"]) == size
    assert report["progressive"]["predicted_ratio"] == pytest.approx(predicted_ratio(cfg, size=size))
    assert report["no_nesting"]["predicted_ratio"] == pytest.approx(predicted_ratio(cfg, nesting=False, size=size))
    assert report["progressive"]["measured_ratio"] > 0
    stages = report["progressive"]["stages"]
    assert [s["calls"] for s in stages] == [2, 2, 2]
    for s in stages:  # guidance doubles the batch: 2 images per forward
        assert s["tflop"] * 1e12 == pytest.approx(2 * 2 * forward_cost(cfg, s["stage"], size=size).total)
    uniform = report["uniform"]["stages"]
    assert [s["stage"] for s in uniform] == [2] and uniform[0]["calls"] == 3


def test_nami_bench_sampling_refuses_a_size_off_the_grid():
    result = subprocess.run(nami_command("bench", "sampling", EXPERIMENTS / "tiny.yaml", *LEARNED_TEXT,
                                         "--width", "100", "--json"), capture_output=True, text=True, timeout=120)  # fmt: skip
    err = result.stderr.strip()
    assert result.returncode == 2 and len(err.splitlines()) == 1 and "--width: 100 px" in err, err
    assert "nearest valid: 96 or 112" in err and not result.stdout
    json.dumps(err)  # printable as is
