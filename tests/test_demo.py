"""`make demo` (scripts/demo.py) budgets training in steps, not minutes: on a loaded or slow machine a wall-time
budget stopped the run early while the cosine schedule was set for the full step count (issue 21, bug 5)."""

from __future__ import annotations

import importlib.util
import json
import sys

from .helpers import EXPERIMENTS, REPO

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "overall")


def _demo():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seconds(budget: str) -> int:
    days, hours, minutes, seconds = map(int, budget.split(":"))
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def test_training_runs_its_steps_and_a_cut_is_said(tmp_path, monkeypatch, capsys):
    from nami.config import load

    demo = _demo()
    data, run_dir = tmp_path / "shapes", tmp_path / "runs" / "tiny-2"
    data.mkdir()
    (data / ".complete").touch()
    run_dir.mkdir(parents=True)
    commands = {}

    def run(label, argv, times, capture=False):  # the commands, recorded instead of run
        commands[label], times[label] = argv, 0.0
        outputs = {"train": f"run directory: {run_dir}\n", "sample": f"{run_dir}/demo_samples/0001/grid.png\n",
                   "eval": json.dumps({c: 0.5 for c in CATEGORIES}),
                   "bench": json.dumps({"progressive": {"seconds": 1.0, "measured_ratio": 0.5, "predicted_ratio": 0.47},
                                        "uniform_s": 2.0})}  # fmt: skip
        return outputs.get(label, "")

    monkeypatch.setattr(demo, "run", run)
    monkeypatch.setattr(demo, "trained_steps", lambda path: 600 if path == run_dir else -1)
    monkeypatch.setattr(sys, "argv", ["demo.py", "--data-dir", str(data)])
    demo.main()
    out = capsys.readouterr().out
    steps = load(EXPERIMENTS / "tiny.yaml").trainer.max_steps
    train = commands["train"]
    assert not any(a.startswith("trainer.max_steps=") for a in train)  # the config's step budget decides
    cap = next(a.split("=", 1)[1] for a in train if a.startswith("trainer.max_time="))
    assert _seconds(cap) >= 30 * 60  # a safety cap, far beyond the 5-10 minutes the steps take on 2 cores
    assert "trainer.run_dir_exists=new" in train  # a repeated demo never replaces the earlier run
    assert f"safety cap, at step 600 of {steps}" in out  # a cut is said, not silent
    assert str(run_dir) in commands["sample"] and str(run_dir) in commands["eval"]  # the run it trained
