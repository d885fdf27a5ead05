"""Self-describing model directories (issue 14, part 3): the export at the end of training and `nami export`,
`NamiPipeline.from_pretrained` / `save_pretrained`, `nami sample / eval --ckpt DIR` without a YAML, and
`load_from_checkpoint` of every LightningModule."""

from __future__ import annotations

import json
import os
import shutil

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from nami import NamiPipeline
from nami.config import ConfigError, load
from nami.lit.inference import ProgressiveInferenceModule
from nami.sampling import Pipeline
from nami.artifacts.model_dir import model_dir_config
from nami.lit.runner import train

from .helpers import EXPERIMENTS, train_tiny_run
from .safety_fixtures import cli, one_error_line

PROMPTS = ["a red circle", "two blue squares"]
FILES = {"config.json", "model.safetensors", "bridges.safetensors", "README.md"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(overrides, config, run directory) of a trained tiny run, evaluated (1 prompt per category) at its end;
    its export is RUN/export/0001."""
    return train_tiny_run(tmp_path_factory.mktemp("export"), ["eval.every_n_steps=3", "eval.train_per_category=1"])


def checkpoint_state(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "step00000003.ckpt", weights_only=True)["state_dict"]


def test_training_ends_with_a_model_directory_of_its_ema_weights(run):
    _, cfg, run_dir = run
    export = run_dir / "export" / "0001"
    assert {p.name for p in export.iterdir()} == FILES
    state = checkpoint_state(run_dir)
    weights = load_file(export / "model.safetensors")
    assert set(weights) == {k[len("ema.") :] for k in state if k.startswith("ema.")}
    assert all(torch.equal(weights[k], state[f"ema.{k}"]) for k in weights)  # the EMA, not the raw weights
    assert any(not torch.equal(weights[k], state[k]) for k in weights if k.startswith("model."))
    bridge = load_file(export / "bridges.safetensors")
    assert bridge and all(torch.equal(v, state[f"bridge.{k}"]) for k, v in bridge.items())
    data = json.loads((export / "config.json").read_text())
    assert data["model"]["width"] == cfg.model.width and data["bridge"]["detail_noise"] is True
    assert data["_training"]["step"] == 3 and data["_training"]["config"]["data"]["batch_size"] == 6
    scores = data["_training"]["eval"]  # read back from the run's TensorBoard eval/* scalars
    assert scores["step"] == 3 and 0.0 <= scores["scores"]["overall"] <= 1.0
    card = (export / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-to-image" in card
    assert "| training step | 3 |" in card and "| overall |" in card and "## Training config" in card


def test_exported_samples_equal_those_of_the_training_checkpoint(run):
    _, cfg, run_dir = run
    reference = Pipeline.from_weights(cfg, run_dir / "checkpoints" / "step00000003.ckpt")
    expected = reference.sample(PROMPTS, seed=11).images
    pipe = NamiPipeline.from_pretrained(run_dir / "export" / "0001")
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # a local directory needs no network
    assert torch.equal(pipe.sample(PROMPTS, seed=11).images, expected)
    images = pipe(PROMPTS, seed=11)
    assert [im.size for im in images] == [(32, 32)] * 2 and images[0].mode == "RGB"
    assert not np.array_equal(np.asarray(pipe(PROMPTS[:1], seed=12)[0]), np.asarray(images[0]))


def test_save_pretrained_then_from_pretrained_is_the_same_pipeline(run, tmp_path):
    _, _, run_dir = run
    pipe = NamiPipeline.from_pretrained(run_dir / "export" / "0001")
    pipe.save_pretrained(tmp_path / "copy")
    assert {p.name for p in (tmp_path / "copy").iterdir()} == FILES
    again = NamiPipeline.from_pretrained(tmp_path / "copy")
    assert again.config == pipe.config and again.training == pipe.training  # step, eval, training config kept
    own, back = pipe.weights(), again.weights()
    assert own.keys() == back.keys() and all(torch.equal(own[k], back[k]) for k in own)
    assert torch.equal(again.sample(PROMPTS, steps=1, seed=3).images, pipe.sample(PROMPTS, steps=1, seed=3).images)
    before = {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()}
    with pytest.raises(ConfigError, match="save_directory: .*copy already exists and is not empty"):
        pipe.save_pretrained(tmp_path / "copy")
    assert {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()} == before


def test_nami_export_never_overwrites(run, tmp_path, capsys):
    _, _, run_dir = run
    code, out, _ = cli(capsys, "export", run_dir, "--out", tmp_path / "model", "--json")
    assert code == 0 and json.loads(out) == {"path": str(tmp_path / "model"), "step": 3, "written": True}
    before = (tmp_path / "model" / "model.safetensors").read_bytes()
    code, _, err = cli(capsys, "export", run_dir, "--out", tmp_path / "model")
    line = one_error_line(err)
    assert code == 2 and "--out" in line and "not empty" in line
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == before
    code, out, _ = cli(capsys, "export", run_dir, "--json")  # RUN/export/0001 already holds these weights
    assert code == 0 and json.loads(out)["written"] is False and json.loads(out)["path"].endswith("export/0001")
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["0001"]


def test_a_resumed_run_exports_anew_only_when_it_trained_further(run, tmp_path):
    args, _, run_dir = run
    root = tmp_path / "root"
    shutil.copytree(run_dir, root / "tiny")
    first = (root / "tiny" / "export" / "0001" / "model.safetensors").read_bytes()
    more = [*args, f"trainer.default_root_dir={root}", "trainer.resume=last", "eval.every_n_steps=0"]
    train(load(EXPERIMENTS / "tiny.yaml", more))  # nothing left to train: no second copy
    assert sorted(p.name for p in (root / "tiny" / "export").iterdir()) == ["0001"]
    train(load(EXPERIMENTS / "tiny.yaml", [*more, "trainer.max_steps=4"]))
    assert sorted(p.name for p in (root / "tiny" / "export").iterdir()) == ["0001", "0002"]
    assert (root / "tiny" / "export" / "0001" / "model.safetensors").read_bytes() == first
    assert json.loads((root / "tiny" / "export" / "0002" / "config.json").read_text())["_training"]["step"] == 4


def test_nami_sample_from_a_model_directory_needs_no_yaml(run, tmp_path, capsys):
    _, _, run_dir = run
    export = run_dir / "export" / "0001"
    code, out, err = cli(capsys, "sample", "--ckpt", export, "--prompt", PROMPTS[0], "--out", tmp_path,
                         "--steps", "1,1,1", "--seed", "5")  # fmt: skip
    assert code == 0, err[-2000:]
    assert str(tmp_path / "0001" / "000-a-red-circle.png") in out
    png = np.asarray(Image.open(tmp_path / "0001" / "000-a-red-circle.png").convert("RGB"))
    assert np.array_equal(png, np.asarray(NamiPipeline.from_pretrained(export)(PROMPTS[:1], steps=1, seed=5)[0]))


def test_a_yaml_next_to_a_model_directory_may_change_sampling_only(run, tmp_path, capsys):
    args, cfg, run_dir = run
    export = run_dir / "export" / "0001"
    sampler_only = tmp_path / "sampler.yaml"
    sampler_only.write_text("sampler:\n  guidance: 2.5\n  steps: [1, 1, 1]\n")
    changed = model_dir_config(export, sampler_only, ["eval.per_category=3"])
    assert changed.sampler.guidance == 2.5 and changed.eval.per_category == 3 and changed.model == cfg.model
    assert model_dir_config(export, EXPERIMENTS / "tiny.yaml", args).flow == cfg.flow  # the training YAML agrees
    for wrong, key in (("flow.prediction=data", "flow.prediction"), ("model.width=96", "model.width"),
                       ("bridge.detail_noise=false", "bridge.detail_noise")):  # fmt: skip
        code, _, err = cli(capsys, "sample", "--ckpt", export, "--prompt", "x", wrong)
        line = one_error_line(err)
        assert code == 2 and line.startswith(f"nami: error: {key}:") and "config.json fixes the model" in line, line
    code, out, _ = cli(capsys, "sample", "--ckpt", run_dir, "--prompt", "x")  # a run directory records its config
    assert code == 0 and out.strip().endswith("grid.png")
    code, _, err = cli(capsys, "sample", "--ckpt", run_dir, "--prompt", "x", "model.width=96")
    assert code == 2 and "config.yaml fixes the model" in one_error_line(err)
    (tmp_path / "loose").mkdir()
    shutil.copy(run_dir / "weights.safetensors", tmp_path / "loose" / "weights.safetensors")
    code, _, err = cli(capsys, "sample", "--ckpt", tmp_path / "loose" / "weights.safetensors", "--prompt", "x")
    assert code == 2 and one_error_line(err).startswith("nami: error: config:")  # no recorded config: the YAML
    code, out, _ = cli(capsys, "eval", "--ckpt", export, "--num", "1", "--json", "sampler.steps=[1,1,1]")
    report = json.loads(out)
    assert code == 0 and report["images"] == 6 and report["steps"] == [1, 1, 1]


def test_from_pretrained_names_what_is_wrong(tmp_path, run):
    _, _, run_dir = run
    for path, message in ((tmp_path / "missing", "not found"), (run_dir, "is not a model directory")):
        with pytest.raises(ConfigError, match=f"from_pretrained: .*{message}"):
            NamiPipeline.from_pretrained(path)
    shutil.copytree(run_dir / "export" / "0001", tmp_path / "other")
    data = json.loads((tmp_path / "other" / "config.json").read_text())
    (tmp_path / "other" / "config.json").write_text(json.dumps({**data, "_nami_format": 99}))
    with pytest.raises(ConfigError, match="_nami_format 99"):
        NamiPipeline.from_pretrained(tmp_path / "other")


def test_an_export_initialises_training(run):
    args, _, run_dir = run
    from nami.artifacts.weights import load_initial_weights
    from nami.lit.joint_flow import JointFlowModule

    cfg = load(EXPERIMENTS / "tiny.yaml", [*args, f"trainer.init_from={run_dir / 'export' / '0001'}"])
    module = JointFlowModule(cfg)
    load_initial_weights(module, cfg)
    weights = load_file(run_dir / "export" / "0001" / "model.safetensors")
    assert all(torch.equal(module.ema.state_dict()[k], v) for k, v in weights.items())
    assert all(torch.equal(module.trainable().state_dict()[k], v) for k, v in weights.items())


def _same_state(a: L.LightningModule, b: L.LightningModule) -> bool:
    x, y = a.state_dict(), b.state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_load_from_checkpoint_restores_every_module(run, tmp_path):
    from data_modules import ShardDataModule
    from nami.lit.bridge_pretrain import BridgePretrainModule
    from nami.lit.joint_flow import JointFlowModule

    _, cfg, run_dir = run
    ckpt = run_dir / "checkpoints" / "step00000003.ckpt"
    joint = JointFlowModule.load_from_checkpoint(ckpt)  # Lightning's default load: weights_only
    state = checkpoint_state(run_dir)
    assert joint.state_dict().keys() == state.keys()
    assert all(torch.equal(joint.state_dict()[k], v) for k, v in state.items())

    bridge = BridgePretrainModule(cfg)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=bridge.total_batches, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)  # fmt: skip
    trainer.fit(bridge, datamodule=ShardDataModule(cfg, joint=False))
    trainer.save_checkpoint(tmp_path / "bridge.ckpt", weights_only=True)
    assert bridge.heldout_count.sum() > 0  # fitted and scored: not the initial state
    assert _same_state(BridgePretrainModule.load_from_checkpoint(tmp_path / "bridge.ckpt"), bridge)

    inference = ProgressiveInferenceModule.from_checkpoint(cfg, ckpt)
    predict_trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False)  # fmt: skip
    predict_trainer.predict(inference, DataLoader([{"prompts": PROMPTS[:1], "seeds": [0]}], batch_size=None))
    predict_trainer.save_checkpoint(tmp_path / "inference.ckpt", weights_only=True)
    restored = ProgressiveInferenceModule.load_from_checkpoint(tmp_path / "inference.ckpt")
    assert _same_state(restored, inference) and restored.cfg == inference.cfg
