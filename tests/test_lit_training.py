"""BridgeFlow pretraining and joint flow training on the tiny config, in process (single CPU device)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from nami.config import ConfigError, load
from nami.lit import JointFlowModule, NonFiniteError
from nami.lit.runner import pretrain_bridges, train

from .helpers import EXPERIMENTS, LEARNED_TEXT, nami_command, tensorboard_image_tags, tensorboard_scalars


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from data_modules.synth import write_shapes

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num=240, shards=4, resolution=32, seed=0)
    return root


def tiny(root, shapes, *overrides):
    return load(EXPERIMENTS / "tiny.yaml", [
        *LEARNED_TEXT, f"data.shards={shapes}/*.tar", "data.batch_size=6", "data.num_workers=1",
        f"trainer.default_root_dir={root}", "trainer.accelerator=cpu", "log.sample_every=0",
        "log.sample_prompts=[a red circle,two blue squares]", "sampler.steps=[2,2,2]", "bridge.fit_batches=10",
        "bridge.heldout_batches=4", "optim.warmup_steps=2", *overrides,
    ])  # fmt: skip


def test_pretrain_bridge_beats_identity_on_heldout(tmp_path, shapes):
    cfg = tiny(tmp_path, shapes)
    start = time.perf_counter()
    report = pretrain_bridges(cfg).report
    elapsed = time.perf_counter() - start
    run = tmp_path / "tiny"
    assert (run / "bridges.safetensors").is_file()
    assert json.loads((run / "bridge_report.json").read_text()) == report
    mse = report["heldout_mse"]
    for transition in ("transition_1", "transition_2"):
        assert mse["conv1x1"][transition] < mse["identity"][transition], mse
    assert elapsed < 60, f"bridge pretraining took {elapsed:.1f}s"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shapes):
    """Bridges fitted, then 3 training steps with a checkpoint every 2 steps and a log line every step."""
    root = tmp_path_factory.mktemp("trained")
    cfg = tiny(root, shapes, "trainer.max_steps=3", "trainer.checkpoint_every=2", "trainer.log_every_n_steps=1")
    pretrain_bridges(cfg)
    return train(cfg)


def test_train_writes_periodic_and_final_checkpoints(trained_run):
    ckpts = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert ckpts == ["step00000002.ckpt", "step00000003.ckpt"]
    state = torch.load(trained_run / "checkpoints" / "step00000003.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 3 and any(k.startswith("ema.model.") for k in state["state_dict"])


def test_train_logs_losses_throughput_and_sample_grids(trained_run):
    scalars = tensorboard_scalars(trained_run / "tb")
    for tag in ("train/loss", "train/loss_stage0", "train/loss_stage1", "train/loss_stage2", "train/lr"):
        assert len(scalars[tag]) == 3, (tag, scalars.get(tag))
    # Lightning's ThroughputMonitor: samples/s and image tokens/s ("items"), FLOP/s from the cost model
    for tag in ("train/device/samples_per_sec", "train/device/items_per_sec", "train/device/flops_per_sec"):
        assert tag in scalars, sorted(scalars)
    assert "samples/stages" in tensorboard_image_tags(trained_run / "tb")
    assert (trained_run / "samples" / "step00000003.png").is_file()


def test_train_exports_finite_ema_weights(trained_run):
    weights = load_file(trained_run / "weights.safetensors")
    assert any(k.startswith("model.double_blocks.0.") for k in weights)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_learnable_bridge_without_weights_names_the_key(tmp_path, shapes):
    with pytest.raises(ConfigError) as err:
        train(tiny(tmp_path, shapes, "trainer.max_steps=1"))
    assert err.value.key == "bridge.weights" and "nami pretrain-bridge" in err.value.message


class NaNAtStep2(JointFlowModule):
    """Injects a non-finite loss into stage 1 of the first batch at step 2."""

    injected = False

    def stage_losses(self, batch, micro: int = 0):
        out = super().stage_losses(batch, micro)
        if self.global_step == 2 and not self.injected:
            self.injected = True
            out.losses = [loss * float("nan") if k == 1 else loss for k, loss in zip(out.stages, out.losses)]
        return out


def test_nonfinite_loss_stops_naming_step_and_stage(tmp_path, shapes):
    cfg = tiny(tmp_path, shapes, "bridge.kind=identity", "trainer.max_steps=4", "trainer.checkpoint_every=1")
    with pytest.raises(NonFiniteError, match="non-finite loss in stage 1 at step 2"):
        train(cfg, module_cls=NaNAtStep2)
    ckpts = sorted((tmp_path / "tiny" / "checkpoints").glob("step*.ckpt"))
    assert [p.name for p in ckpts] == ["step00000001.ckpt", "step00000002.ckpt"]
    state = torch.load(ckpts[-1], weights_only=True, map_location="cpu")
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())


def test_nonfinite_loss_skips_when_configured(tmp_path, shapes):
    cfg = tiny(tmp_path, shapes, "bridge.kind=identity", "trainer.max_steps=3", "trainer.checkpoint_every=10",
               "trainer.skip_nonfinite=true", "trainer.log_every_n_steps=1")  # fmt: skip
    run = train(cfg, module_cls=NaNAtStep2)
    state = torch.load(run / "checkpoints" / "step00000003.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 3  # the skipped batch did not count as a step
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
    assert sum(tensorboard_scalars(run / "tb")["train/skipped_nonfinite"].values()) >= 1


def test_train_2b_without_cuda_exits_2_with_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run(nami_command("train", EXPERIMENTS / "nami_2b.yaml"), capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.accelerator" in lines[0] and "CUDA" in lines[0], result.stderr


def test_skipped_samples_are_logged_by_reason_and_only_reasons_met(tmp_path):
    """data/skipped_<reason> in TensorBoard for the reasons the stream met, summed; no rows of zeros for the
    reasons it did not meet (issue 21, the console)."""
    from .data_fixtures import good, write_tar

    samples = [good(f"k{i:03d}", i) for i in range(12)]
    samples.insert(3, {"__key__": "nocap", "png": samples[0]["png"]})  # no caption
    samples.insert(7, {"__key__": "junk", "png": b"not an image", "txt": b"junk"})  # undecodable
    write_tar(tmp_path / "mixed.tar", samples)
    cfg = tiny(tmp_path, tmp_path, "bridge.kind=identity", "trainer.max_steps=3", "trainer.log_every_n_steps=1",
               f"data.shards={tmp_path}/mixed.tar", "data.shuffle_buffer=0", "data.min_size=0")  # fmt: skip
    run = train(cfg)
    scalars = tensorboard_scalars(run / "tb")
    skipped = {tag: values for tag, values in scalars.items() if tag.startswith("data/skipped_")}
    assert set(skipped) == {"data/skipped_no_caption", "data/skipped_undecodable"}, set(skipped)
    assert max(skipped["data/skipped_no_caption"].values()) >= 1 and max(skipped["data/skipped_undecodable"].values()) >= 1


def test_a_training_run_prints_one_bar_and_no_library_noise(tmp_path, shapes):
    """One `train steps` bar (no `Training: 0/?` drawn before it), no Lightning advertisement, no LeafSpec
    deprecation warning."""
    cfg_args = [*LEARNED_TEXT, f"data.shards={shapes}/*.tar", "data.batch_size=6", "data.num_workers=0",
                f"trainer.default_root_dir={tmp_path}", "trainer.accelerator=cpu", "trainer.max_steps=2",
                "bridge.kind=identity", "log.sample_prompts=[a red circle]", "sampler.steps=[1,1,1]",
                "eval.every_n_steps=0"]  # fmt: skip
    result = subprocess.run(nami_command("train", EXPERIMENTS / "tiny.yaml", *cfg_args), capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.replace("\r", "\n")
    assert "train steps" in out and "Training:" not in out and "v_num" not in out
    both = result.stdout + result.stderr
    assert "litlogger" not in both and "LeafSpec" not in both and "in eval mode" not in both
