"""Stop signals (issue 23, item 14): `nami train` stops after the optimizer step during which SIGTERM / SIGUSR1
came, with that step's checkpoint and exit 143 / 138 (Lightning's own handling exited 0 and saved nothing), and
`trainer.resume=auto` continues bit for bit; on SLURM, SIGUSR1 also requeues the job; under DDP every rank stops
after the same step; `nami sample` / `nami eval` stop after the current batch, keeping what is finished."""

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

from nami import signals
from nami.cli import main
from nami.errors import Interrupted

from .helpers import EXPERIMENTS, LEARNED_TEXT, nami_command, tensorboard_scalars
from .prompt_fixtures import random_model_dir


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
        "sampler.steps=[1,1,1]", "bridge.kind=identity", "optim.warmup_steps=2", "log.record_keys=true", *overrides,
    )  # fmt: skip


def run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def records(run_dir: Path, rank: int = 0) -> list[tuple[int, int]]:
    """(step, micro-batch) of every batch the run started, in order."""
    lines = (run_dir / f"keys-rank{rank}.jsonl").read_text().splitlines()
    return [(r["step"], r["micro"]) for r in map(json.loads, lines)]


def signal_when(args: list[str], run_dir: Path, started: tuple[int, int]) -> subprocess.CompletedProcess:
    """Start `args`, send it SIGTERM once it has started micro-batch `started` = (step, micro), wait for it."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    keys = run_dir / "keys-rank0.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if keys.exists() and started in records(run_dir):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=240)
    assert started in records(run_dir), err[-3000:]
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def stop_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("nami: stopped")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.rstrip().endswith(lines[0])  # the last word of the command
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("model") / "tiny")


def nami(capfd, *args) -> tuple[int, str, str]:
    """`nami ARGS` in this process; stdout and stderr as the file descriptors saw them (a signal handler's note is
    written to fd 2 directly)."""
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def signal_on_call(monkeypatch, owner, name: str, calls: set[int], signum: int = signal.SIGTERM) -> None:
    """`owner.name` sends this process `signum` at the start of its calls numbered in `calls` (1-based)."""
    original, count = getattr(owner, name), [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] in calls:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.slow
def test_sigterm_mid_accumulation_stops_after_the_step_with_its_checkpoint_and_resume_is_bit_exact(tmp_path, shapes):
    """Two micro-batches a step; SIGTERM once the first micro-batch of step 2 started: the run finishes that
    optimizer step, writes step00000003.ckpt (no checkpoint was due), starts no further batch, exits 143; a
    `trainer.resume=auto` run ends on the uninterrupted run's weights, bit for bit."""
    common = ["trainer.max_steps=5", "trainer.checkpoint_every=100", "trainer.accumulate_grad_batches=2"]
    run(train_args(tmp_path, shapes, "straight", *common))
    stopped = tmp_path / "stopped"
    result = signal_when(train_args(tmp_path, shapes, "stopped", *common), stopped, started=(2, 0))
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    line = stop_line(result)
    [(step, checkpoint)] = [(int(p.name[4:12]), p) for p in (stopped / "checkpoints").iterdir()]
    assert step >= 3 and f"step {step}, checkpoint {checkpoint} written" in line, line
    assert "trainer.resume=auto" in line
    started = records(stopped)
    assert started[-2:] == [(step - 1, 0), (step - 1, 1)]  # a whole optimizer step, and nothing after it
    assert torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"] == step
    assert sorted(tensorboard_scalars(stopped / "tb")["train/loss"]) == list(range(step))  # the last step's too
    assert not (stopped / "weights.safetensors").exists() and not (stopped / "export").exists()
    assert not list(stopped.rglob("*partial*")) and not (stopped / ".lock").exists()

    run(train_args(tmp_path, shapes, "stopped", *common, "trainer.resume=auto"))
    final = load_file(tmp_path / "straight" / "weights.safetensors")
    again = load_file(stopped / "weights.safetensors")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)


def test_sigusr1_on_slurm_saves_requeues_and_a_second_signal_while_saving_changes_nothing(tmp_path, shapes, capfd,
                                                                                          monkeypatch):
    """`nami train` in this process under SLURM: SIGUSR1 (SLURM's warning) during step 1, SIGTERM again while the
    checkpoint is being written. The checkpoint is whole, `scontrol requeue <job>` ran (a stand-in records its
    arguments), exit 138 (the first signal decides), no hpc_ckpt_*.ckpt of Lightning's own SIGUSR1 handler."""
    import nami.lit.callbacks as callbacks

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol-calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
             "SLURM_JOB_NAME": "nami-test", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "localhost"}  # fmt: skip
    environ = dict(os.environ)
    os.environ.update(slurm)
    signal_on_call(monkeypatch, torch, "save", {1})  # the first torch.save is the stop's checkpoint
    record = callbacks.KeysRecorder.on_train_batch_start

    def usr1_at_step_1(self, trainer, *args):
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return record(self, trainer, *args)

    monkeypatch.setattr(callbacks.KeysRecorder, "on_train_batch_start", usr1_at_step_1)
    try:
        code, _, err = nami(capfd, *train_args(tmp_path, shapes, "slurm", "trainer.max_steps=4",
                                               "trainer.checkpoint_every=100", "data.num_workers=0")[1:])  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(environ)
    assert code == 128 + signal.SIGUSR1, err[-3000:]
    checkpoint = tmp_path / "slurm" / "checkpoints" / "step00000002.ckpt"
    assert err.strip().splitlines()[-1] == (f"nami: stopped by SIGUSR1: step 2, checkpoint {checkpoint} written; "
                                            "SLURM job 4242 requeued; continue with trainer.resume=auto"), err
    assert "SIGTERM received again; already stopping" in err
    assert calls.read_text().split() == ["requeue", "4242"]
    assert torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"] == 2
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [checkpoint.name]  # no partial file
    assert not list((tmp_path / "slurm").rglob("hpc_ckpt*")) and not signals.active()


@pytest.mark.slow
@pytest.mark.extended
def test_sigterm_to_rank_zero_of_ddp_stops_every_rank_after_the_same_step(tmp_path, shapes):
    """Rank 0 alone gets SIGTERM (Lightning's launcher started rank 1 from it): the ranks agree at the end of the
    step, both stop after it, rank 0 writes its checkpoint and exits 143; the run resumes to the end."""
    common = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=5", "trainer.checkpoint_every=100"]
    stopped = tmp_path / "ddp"
    result = signal_when(train_args(tmp_path, shapes, "ddp", *common), stopped, started=(1, 0))
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    stop_line(result)
    [checkpoint] = (stopped / "checkpoints").iterdir()
    step = int(checkpoint.name[4:12])
    assert records(stopped, 0)[-1] == records(stopped, 1)[-1] == (step - 1, 0)  # both ranks, the same last step
    run(train_args(tmp_path, shapes, "ddp", *common, "trainer.resume=auto"))
    assert (stopped / "weights.safetensors").exists() and not (stopped / ".lock").exists()


def test_sample_prompts_stops_after_the_batch_and_the_same_command_continues(model, tmp_path, capfd, monkeypatch):
    """SIGTERM while the 4th image (of batch 2, images 4-6) is being written, and again at the 5th: batch 2 is
    finished, nothing else is sampled, exit 143 in one line; run again, every image is bit-equal to an
    uninterrupted run's."""
    import nami.sampling.layouts as layouts

    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(4)))
    args = ["sample", "--ckpt", model, "--prompts", prompts, "--images-per-prompt", "2", "--batch-size", "3"]
    assert nami(capfd, *args, "--out", tmp_path / "whole")[0] == 0
    signal_on_call(monkeypatch, layouts, "save_png", {4, 5})
    out = tmp_path / "stopped"
    code, _, err = nami(capfd, *args, "--out", out)
    assert code == 143, err
    lines = err.strip().splitlines()
    assert lines[-1] == f"nami: stopped by SIGTERM: 6 of 8 images are in {out}; the same command continues", err
    assert "already stopping" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [f"{k:06d}.png" for k in range(6)] + ["nami-sample.json"]
    monkeypatch.undo()
    code, text, err = nami(capfd, *args, "--out", out)
    assert code == 0 and "2 images written, 6 were there, 8 in all" in text, err
    files = lambda root: {p.name: p.read_bytes() for p in root.iterdir()}  # noqa: E731
    assert files(out) == files(tmp_path / "whole")


def test_sample_and_eval_stop_after_the_current_batch(model, tmp_path, capfd, monkeypatch):
    """`nami sample --prompt` keeps the images of the finished batches; `nami eval --save-images` keeps the
    images it sampled, scores nothing and says so."""
    from nami.sampling.pipeline import Pipeline

    signal_on_call(monkeypatch, Pipeline, "_sample_batch", {1})
    code, text, err = nami(capfd, "sample", "--ckpt", model, "--prompt", "a", "--prompt", "b", "--prompt", "c",
                           "--batch-size", "2", "--out", tmp_path / "samples")  # fmt: skip
    assert code == 143 and err.strip().endswith(f"2 of 3 images written to {tmp_path / 'samples' / '0001'}"), err
    assert sorted(p.name for p in (tmp_path / "samples" / "0001").iterdir()) == ["000-a.png", "001-b.png", "grid.png"]
    monkeypatch.undo()
    signal_on_call(monkeypatch, Pipeline, "_sample_batch", {1})
    code, text, err = nami(capfd, "eval", "--ckpt", model, "--num", "1", "--save-images", "--out", tmp_path / "eval",
                           "eval.batch_size=2")  # fmt: skip
    kept = tmp_path / "eval" / "0001"
    assert code == 143 and err.strip().endswith(f"2 images sampled, none scored; they are in {kept}"), err
    assert sorted(p.name for p in kept.iterdir()) == ["00000.png", "00001.png", "results.jsonl"]
    assert not signals.active()  # the handlers are given back


def test_outside_a_deferring_section_the_first_signal_raises_and_a_second_is_only_noted(capfd):
    """Before the work reaches a point where it can stop (model building), SIGTERM ends it at once, as Ctrl-C
    would; a signal while that exception unwinds (cleanup) changes nothing."""
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        with signals.handling_stop_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # during cleanup: noted only
    assert stopped.value.code == 143 and str(stopped.value) == "stopped by SIGTERM"
    assert "already stopping" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == previous
