"""Files from users are data: checkpoints and weights load without running anything they contain, and a
file that is not what it claims to be is one line naming it (issue 13)."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from nami.config import ConfigError, load
from nami.artifacts.files import read_dcp_tensors, safe_dcp_loading
from nami.artifacts.weights import read_weights
from nami.lit.runner import train

from .helpers import nami_command
from .safety_fixtures import TINY, RunsCode, cli, one_error_line, run_args, write_evil_metadata


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from data_modules.synth import write_shapes

    root = tmp_path_factory.mktemp("trained")
    write_shapes(root / "shapes", num=48, shards=2, resolution=32)
    args = run_args(root, root / "shapes")
    return root, args, train(load(TINY, args))


def test_a_crafted_fsdp_metadata_runs_no_code_in_sample_eval_bench_or_resume(tmp_path, trained):
    root, args, _ = trained
    marker = tmp_path / "pwned"
    evil = write_evil_metadata(tmp_path / "evil", marker)
    for argv in (["sample", TINY, *args, "--ckpt", evil, "--prompt", "x"],
                 ["eval", TINY, *args, "--ckpt", evil, "--num", "1"],
                 ["bench", "sampling", TINY, *args, "--ckpt", evil, "--repeats", "1", "--batch", "1"],
                 ["train", TINY, *args, "name=resumed", f"trainer.resume={evil}"]):  # fmt: skip
        result = subprocess.run(nami_command(*argv), capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, (argv[0], result.stderr[-2000:])
        line = one_error_line(result.stderr)
        assert "evil" in line and "system is not part of a checkpoint index" in line, line
        assert not marker.exists(), f"`nami {argv[0]}` ran the checkpoint's code"


def test_a_malicious_item_inside_an_fsdp_checkpoint_is_not_unpickled(tmp_path):
    """torch's own loader unpickles non-tensor items without restriction; under safe_dcp_loading it may not."""
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "pwned"
    dcp.save({"state_dict": {"w": torch.ones(2)}, "extra": RunsCode(marker)}, checkpoint_id=tmp_path / "c",
             no_dist=True)  # fmt: skip
    target = {"state_dict": {"w": torch.zeros(2)}, "extra": None}
    with safe_dcp_loading(), pytest.raises(BaseException) as refused:  # torch raises a BaseException here
        dcp.load(target, checkpoint_id=tmp_path / "c", no_dist=True)
    assert "system" in repr(refused.value)  # refused at the forbidden global
    assert not marker.exists()
    with safe_dcp_loading():  # a checkpoint of tensors and plain values loads as before
        dcp.save({"state_dict": {"w": torch.ones(2)}, "lr": 0.5}, checkpoint_id=tmp_path / "ok", no_dist=True)
        ok = {"state_dict": {"w": torch.zeros(2)}, "lr": 0.0}
        dcp.load(ok, checkpoint_id=tmp_path / "ok", no_dist=True)
    assert ok["lr"] == 0.5 and torch.equal(ok["state_dict"]["w"], torch.ones(2))


def test_fsdp_directories_read_as_torch_reads_them(tmp_path):
    """The restricted reader assembles every tensor as torch's own converter does (the reference)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    g = torch.Generator().manual_seed(0)
    state = {"ema.model.a": torch.randn(5, 3, generator=g), "ema.model.b": torch.randn(7, generator=g).bfloat16(),
             "model.a": torch.randn(5, 3, generator=g)}  # fmt: skip
    dcp.save({"state_dict": state, "global_step": 3}, checkpoint_id=tmp_path / "step00000003.ckpt", no_dist=True)
    dcp_to_torch_save(tmp_path / "step00000003.ckpt", tmp_path / "reference.pt")
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)["state_dict"]
    ours = read_dcp_tensors(tmp_path / "step00000003.ckpt", lambda fqn: fqn.startswith("state_dict."))
    assert {k[len("state_dict.") :] for k in ours} == set(reference)
    assert all(torch.equal(ours[f"state_dict.{k}"], v) for k, v in reference.items())
    weights = read_weights(tmp_path / "step00000003.ckpt").tensors
    assert set(weights) == {"model.a", "model.b"} and torch.equal(weights["model.a"], state["ema.model.a"])


@pytest.mark.parametrize("kind", ["text.ckpt", "random.ckpt", "random.safetensors", "truncated.ckpt"])
def test_a_file_that_is_not_a_checkpoint_is_one_line(kind, tmp_path, trained, capsys):
    root, args, run_dir = trained
    path = tmp_path / kind
    if kind == "text.ckpt":
        path.write_text("this is not a checkpoint\n")
    elif kind.startswith("random"):
        path.write_bytes(os.urandom(4096))
    else:
        whole = (run_dir / "checkpoints" / "step00000002.ckpt").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    code, _, err = cli(capsys, "sample", TINY, *args, "--ckpt", path, "--prompt", "x")
    assert code == 2 and kind in one_error_line(err) and "--ckpt" in one_error_line(err)


def test_resume_from_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, trained, capsys):
    root, args, _ = trained
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(2048))
    code, _, err = cli(capsys, "train", TINY, *args, "name=other", f"trainer.resume={junk}")
    assert code == 2 and "trainer.resume" in one_error_line(err) and "junk.bin" in one_error_line(err)


def test_a_checkpoint_of_another_width_is_one_line_naming_the_tensor(trained, tmp_path, capsys):
    root, args, run_dir = trained
    loose = tmp_path / "loose.ckpt"  # outside its run directory: no recorded config to compare with
    loose.write_bytes((run_dir / "checkpoints" / "step00000002.ckpt").read_bytes())
    code, _, err = cli(capsys, "sample", TINY, *args, "model.width=96", "--ckpt", loose, "--prompt", "x")
    line = one_error_line(err)
    assert code == 2 and "--ckpt" in line and "model." in line and "192" in line and "96" in line, line
    # in its run directory, the recorded config refuses it before any tensor is read
    code, _, err = cli(capsys, "sample", TINY, *args, "model.width=96", "--ckpt", run_dir, "--prompt", "x")
    line = one_error_line(err)
    assert code == 2 and line.startswith("nami: error: model.width:") and "192" in line and "96" in line, line


def test_read_weights_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="--ckpt"):
        read_weights(tmp_path / "nothing.ckpt")
    torch.save({"weights": {}}, tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="no state_dict"):
        read_weights(tmp_path / "plain.pt")
