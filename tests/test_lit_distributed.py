"""`nami train` as users run it (subprocesses): exact resume after SIGKILL, DDP against FSDP2 on 2 CPU ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .helpers import EXPERIMENTS, LEARNED_TEXT, nami_command, tensorboard_scalars

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from data_modules.synth import write_shapes

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num=240, shards=4, resolution=32, seed=0)
    return root


def train_args(root: Path, shapes: Path, name: str, *overrides: str) -> list[str]:
    return nami_command(
        "train", EXPERIMENTS / "tiny.yaml", *LEARNED_TEXT, f"name={name}", f"data.shards={shapes}/*.tar",
        "data.batch_size=6", "data.num_workers=1", f"trainer.default_root_dir={root}", "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1", "log.sample_every=0", "log.sample_prompts=[a red circle]",
        "sampler.steps=[1,1,1]", "bridge.kind=identity", "optim.warmup_steps=2", *overrides,
    )  # fmt: skip


def run(args: list[str], timeout: int = 300) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


def step_keys(run_dir: Path) -> dict[int, list[str]]:
    """Keys consumed per step (the last record of a step wins: a resumed run repeats the killed steps)."""
    out = {}
    for line in (run_dir / "keys-rank0.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["keys"]
    return out


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path, shapes):
    common = ["trainer.max_steps=8", "trainer.checkpoint_every=3", "log.record_keys=true"]
    run(train_args(tmp_path, shapes, "straight", *common))

    killed = subprocess.Popen(train_args(tmp_path, shapes, "killed", *common), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = tmp_path / "killed" / "checkpoints" / "step00000003.ckpt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "the run never wrote its step-3 checkpoint"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert not (tmp_path / "killed" / "weights.safetensors").exists()  # it really died mid-run

    run(train_args(tmp_path, shapes, "killed", *common, "trainer.resume=last"))
    straight, resumed = tensorboard_scalars(tmp_path / "straight" / "tb"), tensorboard_scalars(tmp_path / "killed" / "tb")
    later = sorted(s for s in straight["train/loss"] if s >= 3)
    assert len(later) >= 5
    for step in later:
        assert abs(straight["train/loss"][step] - resumed["train/loss"][step]) <= 1e-6, step
        for k in range(3):
            tag = f"train/loss_stage{k}"
            assert abs(straight[tag][step] - resumed[tag][step]) <= 1e-6, (tag, step)
    keys_straight, keys_resumed = step_keys(tmp_path / "straight"), step_keys(tmp_path / "killed")
    assert sorted(keys_straight) == list(range(8)) == sorted(keys_resumed)
    for step in range(3, 8):
        assert keys_resumed[step] == keys_straight[step], step
    final = load_file(tmp_path / "straight" / "weights.safetensors")
    again = load_file(tmp_path / "killed" / "weights.safetensors")
    bad = {n: (final[n] - again[n]).abs().max().item() for n in final if not torch.allclose(final[n], again[n], atol=1e-6)}
    assert not bad, bad


def test_ddp_and_fsdp2_end_with_the_same_parameters(tmp_path, shapes):
    common = ["trainer.devices=2", "trainer.max_steps=3", "trainer.checkpoint_every=3", "optim.ema_decay=0.0"]
    run(train_args(tmp_path, shapes, "ddp", *common, "trainer.strategy=ddp"))
    run(train_args(tmp_path, shapes, "fsdp", *common, "trainer.strategy=fsdp", "trainer.activation_checkpointing=true"))
    ddp = load_file(tmp_path / "ddp" / "weights.safetensors")  # EMA with decay 0: the trained weights
    fsdp = load_file(tmp_path / "fsdp" / "weights.safetensors")
    assert ddp.keys() == fsdp.keys()
    assert ddp["model.final.linear.weight"].abs().sum() > 0  # trained: the zero-initialised head moved
    worst = max((ddp[name] - fsdp[name]).abs().max().item() for name in ddp)
    assert worst <= 1e-5, worst
    assert (tmp_path / "fsdp" / "checkpoints" / "step00000003.ckpt").is_dir()  # a distributed checkpoint
