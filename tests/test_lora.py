"""LoRA adapters (PEFT) in sampling: `nami sample --lora DIR[:SCALE]`, NamiPipeline.load_lora / fuse_lora /
unfuse_lora, `nami export --merge-lora`, and one-line errors for adapters that do not fit (issue 22)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nami import NamiPipeline
from nami.artifacts.lora import write_adapter
from nami.config import load
from nami.models import build_model
from nami.models.lora import AdapterSpec, adapter_state, add_adapter
from nami.sampling import Pipeline

from .helpers import EXPERIMENTS, train_tiny_run
from .safety_fixtures import cli, one_error_line

PROMPTS = ["a red circle", "two blue squares"]


def make_adapter(out, cfg, base, rank: int = 4, seed: int = 0, stages=None, model_overrides=()):
    """A LoRA model directory over `base` (as a LoRA run writes it) with random, non-zero adapter tensors."""
    lora = [f"finetune.lora.rank={rank}", "finetune.lora.alpha=8"] + ([f"finetune.lora.stages={stages}"] if stages else [])
    own = load(EXPERIMENTS / "tiny.yaml", [*cfg, *lora, *model_overrides])
    model = build_model(own)
    spec = AdapterSpec.from_config(own.finetune.lora, own.model, model)
    add_adapter(model, spec)
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()}
    out.mkdir(parents=True)
    write_adapter(out, spec.peft_config(), state, base)
    data = json.loads((base / "config.json").read_text())
    data["finetune"] = {"lora": {**data.get("finetune", {}).get("lora", {}), "rank": rank, "alpha": 8.0,
                                 "stages": stages}, "base_dtype": "float32"}  # fmt: skip
    (out / "config.json").write_text(json.dumps(data))
    shutil.copy(base / "bridges.safetensors", out / "bridges.safetensors")
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny model directory (a trained export, every weight moved off its initial value so that the zero-init
    adaLN gates let the blocks, and with them the adapters, shape the output) and its training overrides."""
    root = tmp_path_factory.mktemp("lora")
    args, cfg, run = train_tiny_run(root, ["sampler.steps=[2,2,2]"])
    export, moved = run / "export" / "0001", root / "base"
    shutil.copytree(export, moved)
    g = torch.Generator().manual_seed(11)
    weights = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in load_file(moved / "model.safetensors").items()}
    save_file(weights, moved / "model.safetensors")
    return moved, args


def latents(pipeline: Pipeline, seed: int = 3) -> torch.Tensor:
    return pipeline.sample(PROMPTS, seed=seed).trace.final


def test_lora_samples_equal_the_merged_export_and_scale_0_is_the_base(base, tmp_path, capsys):
    export, args = base
    adapter = make_adapter(tmp_path / "adapter", args, export)
    cfg = load(EXPERIMENTS / "tiny.yaml", args)
    plain = latents(Pipeline.from_weights(cfg, export))
    with_lora = Pipeline.from_weights(cfg, export)
    with_lora.load_lora(adapter)
    adapted = latents(with_lora)
    assert (adapted - plain).abs().max() > 1e-3  # the adapter changes the samples
    code, out, _ = cli(capsys, "export", adapter, "--merge-lora", "--out", tmp_path / "merged")
    assert code == 0 and (tmp_path / "merged" / "model.safetensors").is_file()
    merged = Pipeline.from_weights(load(EXPERIMENTS / "tiny.yaml", args), tmp_path / "merged")
    assert torch.allclose(latents(merged), adapted, atol=1e-5)  # merged weights = base + adapter, in float32
    zero = Pipeline.from_weights(cfg, export)
    zero.load_lora(adapter, scale=0.0)
    assert torch.equal(latents(zero), plain)  # scale 0 adds exactly nothing
    self_contained = Pipeline.from_weights(cfg, adapter)  # the LoRA model directory alone: base + its adapter
    assert torch.equal(latents(self_contained), adapted)


def test_fuse_then_unfuse_restores_the_base_bit_for_bit(base, tmp_path):
    export, args = base
    adapter = make_adapter(tmp_path / "adapter", args, export, seed=1)
    pipe = NamiPipeline.from_pretrained(export)
    before = pipe.sample(PROMPTS, seed=5).images
    weights = {k: v.clone() for k, v in pipe.weights().items()}
    pipe.load_lora(adapter, 0.7)
    unfused = pipe.sample(PROMPTS, seed=5).images
    pipe.fuse_lora()
    fused = pipe.sample(PROMPTS, seed=5).images
    assert torch.allclose(fused, unfused, atol=1e-5) and not torch.allclose(fused, before, atol=1e-3)
    pipe.unfuse_lora()
    assert all(torch.equal(pipe.weights()[k], v) for k, v in weights.items())  # every base tensor, bit for bit
    pipe.load_lora(adapter, 0.0)  # a second adapter beside the first (scale 0): names stay apart
    pipe.pipeline.lora_scales = {name: 0.0 for name in pipe.pipeline.lora_scales}
    from nami.models.lora import set_active

    set_active(pipe.pipeline.model, pipe.pipeline.lora_scales)
    assert torch.equal(pipe.sample(PROMPTS, seed=5).images, before)


def test_nami_sample_takes_several_adapters(base, tmp_path, capsys):
    export, args = base
    one = make_adapter(tmp_path / "one", args, export, seed=2)
    two = make_adapter(tmp_path / "two", args, export, seed=3, stages="[2]")  # only the blocks stage 2 adds
    code, out, err = cli(capsys, "sample", "--ckpt", export, "--lora", f"{one}:0.5", "--lora", two, "--prompt", "x",
                         "--out", tmp_path / "samples")  # fmt: skip
    assert code == 0, err
    assert sum(line.endswith(".png") for line in out.splitlines()) == 2  # the image and the grid


def test_adapters_that_do_not_fit_are_one_line(base, tmp_path, capsys):
    export, args = base
    wider = make_adapter(tmp_path / "wider", args, export, model_overrides=["model.width=96", "model.heads=4"])
    code, _, err = cli(capsys, "sample", "--ckpt", export, "--lora", wider, "--prompt", "x")
    assert code == 2 and "--lora" in (line := one_error_line(err)) and "another shape" in line, line
    other = make_adapter(tmp_path / "other", args, export)
    config = json.loads((other / "adapter_config.json").read_text())
    config["target_modules"] = "^(double_blocks\\.0\\.img_attn\\.qkv|double_blocks\\.0\\.img_mlp\\.fc1)$"
    (other / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "sample", "--ckpt", export, "--lora", other, "--prompt", "x")
    assert code == 2 and "other" in (line := one_error_line(err)) and "targets" in line, line
    orphan = make_adapter(tmp_path / "orphan", args, export)
    config = json.loads((orphan / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (orphan / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "sample", "--ckpt", orphan, "--prompt", "x")
    assert code == 2 and "gone" in (line := one_error_line(err)) and "not here" in line, line
    code, _, err = cli(capsys, "sample", "--ckpt", export, "--lora", tmp_path / "nothing", "--prompt", "x")
    assert code == 2 and "not a LoRA adapter directory" in one_error_line(err)
