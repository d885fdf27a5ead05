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

from nami.artifacts.files import read_dcp_metadata

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
    """Keys consumed per step, micro-batch after micro-batch (a resumed run repeats the killed steps: the last
    record of a step's micro-batch wins)."""
    out: dict[int, dict[int, list[str]]] = {}
    for line in (run_dir / "keys-rank0.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["step"], {})[record["micro"]] = record["keys"]
    return {step: [k for micro in sorted(batches) for k in batches[micro]] for step, batches in out.items()}


def kill_and_resume(root: Path, args, *common: str, mid_step: int | None = None) -> None:
    """Run "straight" to the end; run "killed", SIGKILL it once its step-3 checkpoint exists (and, with `mid_step`,
    once a micro-batch of that step has started: mid-accumulation), resume it with trainer.resume=last."""
    run(args("straight", *common))
    killed = subprocess.Popen(args("killed", *common), start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = root / "killed" / "checkpoints" / "step00000003.ckpt"
    keys = root / "killed" / "keys-rank0.jsonl"

    def ready() -> bool:
        if not checkpoint.exists():
            return False
        return mid_step is None or (keys.exists() and f'"step": {mid_step},' in keys.read_text())

    deadline = time.monotonic() + 240
    while not ready() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready(), "the run never got to the point where it is killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert not (root / "killed" / "weights.safetensors").exists()  # it really died mid-run
    if mid_step is not None:  # it died inside step `mid_step`: no micro-batch of the next step had started
        assert f'"step": {mid_step + 1},' not in keys.read_text()
    written = checkpoint.stat().st_mtime_ns
    run(args("killed", *common, "trainer.resume=last"))
    assert checkpoint.stat().st_mtime_ns == written  # not saved again from inside the resumed step


def assert_same_run(root: Path, steps: int, resumed_from: int = 3) -> None:
    """The resumed run logged the uninterrupted run's losses, read its data and ended on its weights."""
    straight, resumed = tensorboard_scalars(root / "straight" / "tb"), tensorboard_scalars(root / "killed" / "tb")
    later = sorted(s for s in straight["train/loss"] if s >= resumed_from)
    assert len(later) == steps - resumed_from
    for step in later:
        assert abs(straight["train/loss"][step] - resumed["train/loss"][step]) <= 1e-6, step
        for k in range(3):
            tag = f"train/loss_stage{k}"
            assert abs(straight[tag][step] - resumed[tag][step]) <= 1e-6, (tag, step)
    keys_straight, keys_resumed = step_keys(root / "straight"), step_keys(root / "killed")
    assert sorted(keys_straight) == list(range(steps)) == sorted(keys_resumed)
    for step in range(resumed_from, steps):
        assert keys_resumed[step] == keys_straight[step], step
    final = load_file(root / "straight" / "weights.safetensors")
    again = load_file(root / "killed" / "weights.safetensors")
    bad = {n: (final[n] - again[n]).abs().max().item() for n in final if not torch.allclose(final[n], again[n], atol=1e-6)}
    assert not bad, bad


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path, shapes):
    common = ["trainer.max_steps=8", "trainer.checkpoint_every=3", "log.record_keys=true"]
    kill_and_resume(tmp_path, lambda name, *more: train_args(tmp_path, shapes, name, *more), *common)
    assert_same_run(tmp_path, 8)


@pytest.mark.extended
def test_sigkill_mid_accumulation_then_resume_reproduces_the_uninterrupted_run(tmp_path, shapes):
    """trainer.accumulate_grad_batches=2: killed after a micro-batch of step 3 started; the resumed run redoes
    step 3 from its first micro-batch, with the same data and noise."""
    common = ["trainer.max_steps=6", "trainer.checkpoint_every=3", "log.record_keys=true",
              "trainer.accumulate_grad_batches=2"]  # fmt: skip
    kill_and_resume(tmp_path, lambda name, *more: train_args(tmp_path, shapes, name, *more), *common, mid_step=3)
    assert_same_run(tmp_path, 6)
    records = [json.loads(line) for line in (tmp_path / "killed" / "keys-rank0.jsonl").read_text().splitlines()]
    assert [(r["step"], r["micro"]) for r in records if r["step"] == 3][-2:] == [(3, 0), (3, 1)]  # redone whole
    assert len(step_keys(tmp_path / "straight")[3]) == 12  # two micro-batches of 6


@pytest.fixture(scope="module")
def base(tmp_path_factory, shapes):
    """A trained tiny model directory, the base of the partial fine-tunes below."""
    root = tmp_path_factory.mktemp("base")
    run(train_args(root, shapes, "base", "trainer.max_steps=3", "trainer.checkpoint_every=3"))
    return sorted((root / "base" / "export").iterdir())[-1]


@pytest.mark.extended
def test_sigkill_then_resume_of_a_partial_fine_tune(tmp_path, shapes, base):
    """Only the blocks of stage 2 and the head train from trainer.init_from: checkpoints hold no base tensor, and
    the resumed run (base reloaded from init_from, the rest from the checkpoint) ends on the same weights."""
    common = ["trainer.max_steps=6", "trainer.checkpoint_every=3", "log.record_keys=true", f"trainer.init_from={base}",
              "trainer.trainable=[stage:2,model.final.*]"]  # fmt: skip
    kill_and_resume(tmp_path, lambda name, *more: train_args(tmp_path, shapes, name, *more), *common)
    state = torch.load(tmp_path / "killed" / "checkpoints" / "step00000003.ckpt", weights_only=True)["state_dict"]
    assert all(k.startswith(("model.single_blocks.1.", "model.final.", "ema.model.single_blocks.1.",
                             "ema.model.final.")) for k in state), sorted(state)[:5]  # fmt: skip
    assert_same_run(tmp_path, 6)


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


@pytest.mark.extended
def test_a_partial_fine_tune_under_ddp_and_fsdp2_ends_with_the_same_weights(tmp_path, shapes, base):
    """The EMA of the trained tensors only, sharded under FSDP2 like them, swapped into the live model for a sample
    grid after every step and back; the FSDP run is stopped at step 2 and resumed from its distributed checkpoint,
    which holds no base tensor (reloaded from trainer.init_from)."""
    common = ["trainer.devices=2", "trainer.checkpoint_every=2", "optim.ema_decay=0.0", f"trainer.init_from={base}",
              "trainer.trainable=[stage:2,model.final.*]", "log.sample_every=1"]  # fmt: skip
    run(train_args(tmp_path, shapes, "ddp", *common, "trainer.strategy=ddp", "trainer.max_steps=3"))
    run(train_args(tmp_path, shapes, "fsdp", *common, "trainer.strategy=fsdp", "trainer.max_steps=2"))
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "step00000002.ckpt"
    stored = {fqn for fqn in read_dcp_metadata(checkpoint).state_dict_metadata if fqn.startswith("state_dict.")}
    assert stored and all(fqn.startswith(("state_dict.model.single_blocks.1.", "state_dict.model.final.",
                                          "state_dict.ema.model.")) for fqn in stored), sorted(stored)[:5]  # fmt: skip
    run(train_args(tmp_path, shapes, "fsdp", *common, "trainer.strategy=fsdp", "trainer.max_steps=3",
                   "trainer.resume=last"))  # fmt: skip
    ddp = load_file(tmp_path / "ddp" / "weights.safetensors")
    fsdp = load_file(tmp_path / "fsdp" / "weights.safetensors")
    base_weights = load_file(base / "model.safetensors")
    assert ddp.keys() == fsdp.keys() == base_weights.keys()
    assert all(torch.equal(ddp[k], base_weights[k]) and torch.equal(fsdp[k], base_weights[k])
               for k in ddp if not k.startswith(("model.single_blocks.1.", "model.final.")))  # fmt: skip
    assert not torch.equal(ddp["model.final.linear.weight"], base_weights["model.final.linear.weight"])
    worst = max((ddp[name] - fsdp[name]).abs().max().item() for name in ddp)
    assert worst <= 1e-5, worst


LORA = "finetune.lora.rank=4"


@pytest.mark.extended
def test_sigkill_then_resume_of_a_lora_run(tmp_path, shapes, base):
    """LoRA adapters on trainer.init_from's base: checkpoints hold the adapters alone, and the resumed run (base
    reloaded from init_from, adapters and their optimizer state from the checkpoint) ends on the same adapters."""
    common = ["trainer.max_steps=6", "trainer.checkpoint_every=3", "log.record_keys=true", f"trainer.init_from={base}",
              LORA]  # fmt: skip
    kill_and_resume(tmp_path, lambda name, *more: train_args(tmp_path, shapes, name, *more), *common)
    state = torch.load(tmp_path / "killed" / "checkpoints" / "step00000003.ckpt", weights_only=True)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state), sorted(state)[:5]
    assert_same_run(tmp_path, 6)


@pytest.mark.extended
def test_a_lora_run_under_ddp_and_fsdp2_ends_with_the_same_adapter(tmp_path, shapes, base):
    """Two CPU ranks: DDP, and FSDP2 (the base sharded too) stopped at step 2 and resumed from its distributed
    checkpoint, which holds the adapters alone; both end with the same adapter files."""
    common = ["trainer.devices=2", "trainer.checkpoint_every=2", "optim.ema_decay=0.0", f"trainer.init_from={base}",
              LORA, "log.sample_every=1"]  # fmt: skip
    run(train_args(tmp_path, shapes, "ddp", *common, "trainer.strategy=ddp", "trainer.max_steps=3"))
    run(train_args(tmp_path, shapes, "fsdp", *common, "trainer.strategy=fsdp", "trainer.max_steps=2"))
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "step00000002.ckpt"
    stored = {fqn for fqn in read_dcp_metadata(checkpoint).state_dict_metadata if fqn.startswith("state_dict.")}
    assert stored and all(".lora_A." in fqn or ".lora_B." in fqn for fqn in stored), sorted(stored)[:5]
    run(train_args(tmp_path, shapes, "fsdp", *common, "trainer.strategy=fsdp", "trainer.max_steps=3",
                   "trainer.resume=last"))  # fmt: skip
    ddp, fsdp = (load_file(sorted((tmp_path / name / "export").iterdir())[-1] / "adapter_model.safetensors")
                 for name in ("ddp", "fsdp"))  # the newest model directories: both at step 3
    assert ddp.keys() == fsdp.keys() and len(ddp) > 10
    assert any(t.abs().sum() > 0 for k, t in ddp.items() if ".lora_B." in k)  # trained: B moved off zero
    worst = max((ddp[name] - fsdp[name]).abs().max().item() for name in ddp)
    assert worst <= 1e-5, worst
