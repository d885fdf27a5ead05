"""scripts/gpu_step_2b.py runs the module's own training step (FSDP2 strategy, AdamW, EMA) on precomputed-style
batches: on the CPU (`--device cpu`, a world of one over gloo) two steps of the tiny config give finite losses,
an EMA that moved, and the module's FLOP count; without CUDA the default GPU run is one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nami.config import load
from nami.models import forward_cost

from .helpers import EXPERIMENTS, REPO

SCRIPT = REPO / "scripts" / "gpu_step_2b.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_two_cpu_steps_of_the_real_training_step():
    overrides = ["data.batch_size=6", "trainer.precision=32-true", "optim.warmup_steps=1"]
    result = run_script("--config", str(EXPERIMENTS / "tiny.yaml"), "--device", "cpu", "--steps", "2", "--json",
                        *overrides)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["loss"]) == len(report["step_s"]) == 2
    assert all(torch.isfinite(torch.tensor(report["loss"])))
    assert report["ema_max_change"] > 0  # the module's optimizer_step updated the EMA
    cfg = load(EXPERIMENTS / "tiny.yaml", overrides)
    flops = 3 * sum(n * forward_cost(cfg, k).total for k, n in enumerate(report["stage_counts"]))
    assert report["model_flop_per_step"] == flops and report["model_tflops"] > 0
    assert report["stage_counts"] == [1, 4, 1]  # 6 at tiny's 1:3:1
    assert "sys.path" not in SCRIPT.read_text()  # runs from the installed packages


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_without_cuda_it_says_so_in_one_line():
    result = run_script()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["gpu_step_2b: error: needs a CUDA GPU (or --device cpu)"]
