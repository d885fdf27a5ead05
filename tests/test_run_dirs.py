"""A run directory holds one config; samples never replace earlier samples; checkpoints keep the newest N and
hold only trainable state; resume=auto serves first launch and restarts (issue 13)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

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


def _files(root) -> dict:
    return {p: p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_training_again_from_step_0_is_refused_and_changes_nothing(tmp_path, shapes, capsys):
    """Without trainer.resume, a second run of the same config would restart at step 0 in the same directory:
    replace weights.safetensors, mix two histories in checkpoints/ and tb/ (issue 21, bug 1)."""
    first = train(load(TINY, run_args(tmp_path, shapes, "name=r")))
    before = _files(first)
    code, _, err = cli(capsys, "train", TINY, *run_args(tmp_path, shapes, "name=r"))
    line = one_error_line(err)
    assert code == 2 and "trainer.resume=last" in line and "trainer.run_dir_exists=new" in line, line
    assert _files(first) == before  # nothing written, nothing replaced
    code, _, err = cli(capsys, "pretrain-bridge", TINY, *run_args(tmp_path, shapes, "name=r"))
    assert code == 2 and "trained with its bridge" in one_error_line(err)  # a refit would swap the bridge under it
    assert _files(first) == before
    again = train(load(TINY, run_args(tmp_path, shapes, "name=r", "trainer.run_dir_exists=new")))
    assert again.path.name == "r-2" and (again / "weights.safetensors").is_file() and _files(first) == before


def test_pretrain_bridge_prints_the_directory_it_wrote(tmp_path, shapes, capsys):
    """With trainer.run_dir_exists=new the bridge goes to name-2: the printed path is that one (bug 2)."""
    fit = ["bridge.kind=conv1x1", "bridge.fit_batches=2", "bridge.heldout_batches=1"]
    code, out, _ = cli(capsys, "pretrain-bridge", TINY, *run_args(tmp_path, shapes, "name=b", *fit))
    assert code == 0 and f"wrote {tmp_path / 'b' / 'bridges.safetensors'}" in out
    code, out, _ = cli(capsys, "pretrain-bridge", TINY, *run_args(tmp_path, shapes, "name=b", "model.width=96",
                                                                  "trainer.run_dir_exists=new", *fit))  # fmt: skip
    assert code == 0 and f"wrote {tmp_path / 'b-2' / 'bridges.safetensors'}" in out
    assert (tmp_path / "b-2" / "bridges.safetensors").is_file()


def test_a_second_process_on_the_run_is_refused_naming_the_holder(tmp_path, shapes, capsys):
    """The run directory's lock: a live holder refuses a second run in one line; a dead one's lock is taken
    over with a notice (issue 23, item 17)."""
    import json
    import socket

    from nami.artifacts import RunDir

    args = run_args(tmp_path, shapes, "name=l")
    run = RunDir.named(load(TINY, args))
    run.path.mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-12-03 06:00:00"}
        (run.path / ".lock").write_text(json.dumps(lock))
        code, _, err = cli(capsys, "train", TINY, *args)
        line = one_error_line(err)
        assert code == 2 and f"process {holder.pid} on {socket.gethostname()}" in line and ".lock" in line, line
        assert not (run.path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = cli(capsys, "train", TINY, *args)  # the holder is gone: its lock is taken over
    assert code == 0 and "taking over the run lock" in err and str(holder.pid) in err
    assert not (run.path / ".lock").exists() and (run.path / "weights.safetensors").is_file()  # released
