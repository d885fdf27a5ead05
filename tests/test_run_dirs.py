"""A run directory holds one config; samples never replace earlier samples; checkpoints keep the newest N and
hold only trainable state; resume=auto serves first launch and restarts (issue 13)."""

from __future__ import annotations

import re
import subprocess

import pytest
import torch
from PIL import Image

from nami.config import ConfigError, load
from nami.lit.runner import train

from .helpers import nami_command
from .safety_fixtures import TINY, cli, one_error_line, run_args


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from data_modules.synth import write_shapes

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num=48, shards=2, resolution=32)
    return root


def test_a_reused_name_with_another_model_is_refused_naming_the_key(tmp_path, shapes, capsys):
    first = train(load(TINY, run_args(tmp_path, shapes, "name=x")))
    weights = (first / "weights.safetensors").read_bytes()
    code, _, err = cli(capsys, "train", TINY, *run_args(tmp_path, shapes, "name=x", "model.width=96"))
    line = one_error_line(err)
    assert code == 2 and "trainer.run_dir_exists" in line and "model.width=192" in line and "96" in line, line
    assert (first / "weights.safetensors").read_bytes() == weights  # untouched
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["step00000002.ckpt"]

    same = train(load(TINY, run_args(tmp_path, shapes, "name=x", "trainer.max_steps=3", "trainer.resume=last")))
    assert same == first  # the same config (more steps, resumed) goes on in the same directory


def test_run_dir_exists_new_picks_a_suffix_and_finds_it_again(tmp_path, shapes):
    train(load(TINY, run_args(tmp_path, shapes, "name=y")))
    wider = run_args(tmp_path, shapes, "name=y", "model.width=96", "trainer.run_dir_exists=new")
    second = train(load(TINY, wider))
    assert second.name == "y-2" and (second / "weights.safetensors").is_file()
    assert train(load(TINY, [*wider, "trainer.resume=last", "trainer.max_steps=3"])) == second


def test_run_dir_exists_overwrite_clears_the_previous_run(tmp_path, shapes):
    first = train(load(TINY, run_args(tmp_path, shapes, "name=z", "trainer.checkpoint_every=1")))
    assert len(list((first / "checkpoints").iterdir())) == 2
    again = train(load(TINY, run_args(tmp_path, shapes, "name=z", "model.width=96",
                                      "trainer.run_dir_exists=overwrite")))  # fmt: skip
    assert again == first and sorted(p.name for p in (again / "checkpoints").iterdir()) == ["step00000002.ckpt"]
    assert load(TINY).model.width != 96 and "width: 96" in (again / "config.yaml").read_text()


def test_sampling_twice_keeps_both_and_prints_every_file(tmp_path, shapes, capsys):
    run = train(load(TINY, run_args(tmp_path, shapes, "name=s")))
    common = ["sample", TINY, *run_args(tmp_path, shapes, "name=another_name"), "--ckpt", run, "--prompt", "a",
              "--prompt", "b", "--stages"]  # fmt: skip
    code, out1, _ = cli(capsys, *common)
    first = [line for line in out1.splitlines() if line.endswith(".png")]
    assert code == 0 and len(first) == 5  # two images, two stage strips, the grid
    assert any(p.endswith("-stages.png") for p in first) and first[-1].endswith("grid.png")
    assert all(str(run / "samples") in p for p in first)  # beside the weights, not under the config's name
    before = {p: open(p, "rb").read() for p in first}
    code, out2, _ = cli(capsys, *common, "--seed", "5")
    second = [line for line in out2.splitlines() if line.endswith(".png")]
    assert code == 0 and not set(first) & set(second)
    assert all(open(p, "rb").read() == data for p, data in before.items())  # the first call's files unchanged
    assert Image.open(second[0]).size == (32, 32)


def test_checkpoints_hold_no_frozen_encoder_and_resume(tmp_path, shapes):
    cfg = load(TINY, run_args(tmp_path, shapes, "name=m", "text_encoder.kind=minilm", "text_encoder.dim=384",
                              "text_encoder.pooled_dim=384"))  # fmt: skip
    run = train(cfg)
    state = torch.load(run / "checkpoints" / "step00000002.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    assert not [k for k in state if k.startswith(("text_encoder.", "autoencoder.", "ema.text_encoder."))]
    assert any(k.startswith("model.") for k in state) and any(k.startswith("ema.model.") for k in state)
    frozen = sum(p.numel() for p in __import__("nami.models", fromlist=["x"]).build_text_encoder(cfg.text_encoder).parameters())
    stored = sum(t.numel() for t in state.values())
    assert stored < frozen  # the 22M-parameter MiniLM would dwarf the tiny model's state
    resumed = train(load(TINY, [*run_args(tmp_path, shapes, "name=m", "text_encoder.kind=minilm", "text_encoder.dim=384",
                                          "text_encoder.pooled_dim=384"), "trainer.max_steps=3", "trainer.resume=last"]))  # fmt: skip
    assert (resumed / "checkpoints" / "step00000003.ckpt").is_file()


def test_resume_auto_starts_fresh_then_resumes_and_keep_holds(tmp_path, shapes):
    args = run_args(tmp_path, shapes, "name=a", "trainer.resume=auto", "trainer.checkpoint_every=1",
                    "trainer.keep_checkpoints=2")  # fmt: skip
    run = train(load(TINY, args))  # nothing to resume: a fresh start
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step00000001.ckpt", "step00000002.ckpt"]
    train(load(TINY, [*args, "trainer.max_steps=4"]))  # resumes from step 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step00000003.ckpt", "step00000004.ckpt"]
    state = torch.load(run / "checkpoints" / "step00000004.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 4
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        train(load(TINY, run_args(tmp_path, shapes, "name=fresh", "trainer.resume=last")))


def test_the_progress_bar_counts_steps_of_the_budget(tmp_path, shapes):
    args = run_args(tmp_path, shapes, "name=p", "trainer.max_steps=3")
    first = subprocess.run(nami_command("train", TINY, *args), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    bar = first.stdout.replace("\r", "\n")  # Lightning draws its bar on stdout
    assert "train steps" in bar and "3/3" in bar and not re.search(r"\d/-\d", bar) and "Epoch 0" not in bar
    again = subprocess.run(nami_command("train", TINY, *args, "trainer.max_steps=5", "trainer.resume=last"),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    bar = again.stdout.replace("\r", "\n")
    assert "5/5" in bar and "3/5" in bar and "6/5" not in bar and "1/5" not in bar  # continues from step 3
