"""scripts/gpu_report.py: on tiny (CPU) every section runs and writes finite figures beside `nami plan`'s; a section
that runs out of memory, fails, hangs or dies is recorded in its entry and the next one still runs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_report.py"
TINY_SECTIONS = ["train_full", "train_lora", "sampling_batch1", "sampling_batch8", "official_tiny"]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_report"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def check_training(entry: dict, steps: int) -> None:
    assert len(entry["step_s"]) == len(entry["loss"]) == steps
    assert all(positive(t) for t in entry["step_s"]) and all(math.isfinite(x) for x in entry["loss"])
    assert positive(entry["s_per_step"]) and positive(entry["model_flop_per_step"]) and positive(entry["tflops"])
    assert entry["mfu"] is None and "cpu" in entry["mfu_note"]  # no bf16 peak is known for a CPU
    assert entry["peak_memory_allocated_bytes"] is None and "CPU" in entry["peak_memory_note"]
    compared = entry["plan_vs_measured"]
    peak = compared["peak_memory"]
    assert positive(peak["planned"]) and peak["planned"] == entry["plan"]["bytes"]["total"]
    assert peak["measured"] is None and peak["ratio"] is None and "CPU" in peak["note"]
    for key in ("parameters", "gradients", "optimizer", "ema"):
        assert positive(compared[key]["measured"]) and positive(compared[key]["planned"]), key
    assert entry["params"]["trained"] == entry["plan"]["params"]["trained"]


def check_sampling(entry: dict, batch: int) -> None:
    assert entry["batch"] == batch and entry["pct_bf16_peak_note"]
    for mode in ("uniform", "progressive", "no_nesting"):
        figures = entry[mode]
        assert positive(figures["s_per_image"]) and positive(figures["tflops"]), mode
        assert figures["s_per_call"] == pytest.approx(batch * figures["s_per_image"])
        assert figures["pct_bf16_peak"] is None
    assert positive(entry["progressive"]["measured_ratio"]) and positive(entry["progressive"]["predicted_ratio"])


@pytest.mark.slow
@pytest.mark.extended
def test_tiny_report_measures_every_section_beside_the_plan(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--out", str(out)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.is_file(), result.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == TINY_SECTIONS
    assert result.returncode == (0 if all(e["status"] == "ok" for e in sections.values()) else 1)
    assert report["mode"] == "tiny" and report["tiny_reason"] == "--tiny"
    env_ = report["environment"]
    assert env_["device"] == "cpu" and env_["torch"] == torch.__version__ and "cuda" in env_
    assert len(env_["commit"]) == 40 if env_["commit"] else env_["commit_note"]

    full = sections["train_full"]
    assert full["status"] == "ok", full.get("traceback")
    check_training(full, steps=2)
    # on the CPU the plan's parameter, gradient, optimizer and EMA bytes are those the module holds after its steps
    assert all(full["plan_vs_measured"][k]["ratio"] == 1.0 for k in ("parameters", "gradients", "optimizer", "ema"))

    lora = sections["train_lora"]
    assert lora["status"] == "ok", lora.get("traceback")
    check_training(lora, steps=2)
    assert lora["lora_rank"] == 4 and 0 < lora["params"]["trained"] < lora["params"]["total"] / 10
    assert all(lora["plan_vs_measured"][k]["ratio"] == 1.0 for k in ("parameters", "gradients", "optimizer", "ema"))

    check_sampling(sections["sampling_batch1"], batch=1)
    check_sampling(sections["sampling_batch8"], batch=8)
    official = sections["official_tiny"]
    assert official["status"] == "ok", official.get("traceback")
    check_sampling(official, batch=1)
    assert official["rope_axes"] == [16, 56, 56] and official["timestep_grid"] == "official"
    assert official["bridge"] == "scalar_bias" and positive(official["conversion"]["release_parameters"])
    assert "sys.path" not in SCRIPT.read_text()  # runs from the installed packages


def test_each_failure_is_recorded_and_the_next_section_runs(tmp_path):
    if torch.cuda.is_initialized():
        pytest.skip("an earlier test initialised CUDA in this process, and the sections run in forks of it")
    gpu_report = load_script()
    setup = gpu_report.Setup(tiny=True, steps=2)

    def out_of_memory(section, setup):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def fails(section, setup):
        raise ValueError("a bad figure\nsecond line")

    def hangs(section, setup):
        time.sleep(60)

    def dies(section, setup):
        os.kill(os.getpid(), signal.SIGKILL)

    def works(section, setup):
        return {"figure": 1.5, "not_a_number": float("nan")}

    config = REPO / "experiments" / "tiny.yaml"
    runs = [("oom", out_of_memory, 30), ("error", fails, 30), ("hang", hangs, 1), ("crash", dies, 30),
            ("ok", works, 30)]  # fmt: skip
    chosen = [gpu_report.Section(name, name, config, (), budget, fn) for name, fn, budget in runs]
    start = time.perf_counter()
    report = gpu_report.run_report(setup, chosen, tmp_path / "r.json", total_budget=120, tiny_reason="--tiny")
    assert time.perf_counter() - start < 30  # the hanging section was stopped at its budget
    written = json.loads((tmp_path / "r.json").read_text())
    s = written["sections"]
    assert [s[n]["status"] for n, _, _ in runs] == ["out_of_memory", "error", "timeout", "crashed", "ok"]
    assert s["oom"]["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert s["error"]["error"] == "ValueError: a bad figure" and "ValueError: a bad figure" in s["error"]["traceback"]
    assert "signal 9" in s["crash"]["error"] and "1 s" in s["hang"]["error"]
    assert s["ok"]["figure"] == 1.5 and s["ok"]["not_a_number"] == "nan"  # valid JSON, never a bare NaN
    assert written["environment"]["device"] == "cpu" and report["sections"].keys() == s.keys()

    spent = gpu_report.run_report(setup, chosen[-1:], tmp_path / "spent.json", total_budget=0, tiny_reason="--tiny")
    assert spent["sections"]["ok"]["status"] == "skipped"
