"""`make demo`: the tiny NAMI end to end with the real commands, each timed, then the headline figures.

    .venv/bin/python scripts/demo.py [--config experiments/tiny.yaml] [--max-train-minutes 60] [key=value ...]

Steps: write GenEval-Shapes shards (unless present), fit the bridges, train the tiny config for its step budget
(trainer.max_steps; it scores GenEval-Shapes every eval.every_n_steps on the way), sample a grid for fixed prompts
with stage dumps, score GenEval-Shapes, benchmark sampling; then print the eval curve of training and plot it
beside the run. The budget is in steps, not minutes, so the figures do not depend on how loaded or fast the
machine is (the same steps took 5 minutes on one machine and 10 on another); the wall-time cap only guards
against a machine far slower than expected, and the demo says so when it cut training short. A repeated demo
trains a new run (runs/tiny-2, ...) instead of replacing the earlier one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMI = str(Path(sys.executable).parent / "nami")
PROMPTS = [
    "a photo of a red circle",
    "a photo of a blue square",
    "a photo of a green triangle",
    "a photo of a yellow circle",
    "a photo of two squares",
    "a photo of three circles",
    "a photo of a magenta triangle and a cyan square",
    "a photo of a red square left of a blue circle",
]


def run(label: str, argv: list[str], times: dict, capture: bool = False) -> str:
    """Run one step, echo the command, record its wall time; stop the demo if it fails."""
    print(f"\n== {label}: {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO, text=True, stdout=subprocess.PIPE if capture else None)
    times[label] = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"demo: step '{label}' failed with exit code {result.returncode}")
    return result.stdout or ""


def eval_curves(tb_dir: Path, since: float = 0.0) -> dict[str, dict[int, float]]:
    """The eval/* scalars of a run's TensorBoard files written after `since` (a time.time(); earlier runs in
    the same directory left theirs): tag -> step -> value (later files win on repeats)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    files = [p for p in tb_dir.glob("events.out.tfevents.*") if p.stat().st_mtime >= since]
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith("eval/"):
                curves.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return curves


def plot_curves(curves: dict[str, dict[int, float]], path: Path, title: str) -> None:
    """eval/overall bold, each category thin, over training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for tag, points in sorted(curves.items(), key=lambda item: item[0] == "eval/overall"):
        steps = sorted(points)
        style = dict(color="black", lw=2.5) if tag == "eval/overall" else dict(lw=1, alpha=0.7)
        ax.plot(steps, [points[s] for s in steps], marker="o", label=tag.removeprefix("eval/"), **style)
    ax.set(xlabel="training step", ylabel="GenEval-Shapes accuracy", ylim=(0, 1), title=title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def trained_steps(run_dir: Path) -> int:
    """The step the run's weights were written at."""
    from nami.artifacts.weights import weights_source, weights_step

    return weights_step(weights_source(run_dir)) or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/tiny.yaml")
    # tiny trains 1700 steps in 5-10 minutes on 2 cores; the cap is a safety only (see the module docstring)
    parser.add_argument("--max-train-minutes", type=float, default=60.0)
    parser.add_argument("--data-dir", default="data/geneval_shapes")
    parser.add_argument("--samples", type=int, default=20000, help="GenEval-Shapes samples to write")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every step")
    args = parser.parse_args()

    from nami.config import load
    from nami.eval.shapes import CATEGORIES

    overrides = [f"data.shards={args.data_dir}/*.tar", *args.overrides]
    cfg = load(REPO / args.config, overrides)
    config = [args.config, *overrides, "trainer.run_dir_exists=new"]
    times: dict[str, float] = {}
    total = time.perf_counter()

    if not (REPO / args.data_dir / ".complete").exists():
        run("data", [NAMI, "data", "synth", "--out", args.data_dir, "--num", str(args.samples), "--shards", "8",
                     "--resolution", str(cfg.resolution)], times)  # fmt: skip
        (REPO / args.data_dir / ".complete").touch()
    run("bridges", [NAMI, "pretrain-bridge", *config], times)
    seconds = int(args.max_train_minutes * 60)
    cap = f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    started = time.time()
    trained = run("train", [NAMI, "train", *config, f"trainer.max_time={cap}"], times, capture=True)
    print(trained, end="")
    run_dir = Path(next(line.split(": ", 1)[1] for line in trained.splitlines() if line.startswith("run directory: ")))
    steps = trained_steps(run_dir)
    if steps < cfg.trainer.max_steps:
        print(f"\ndemo: training stopped at the {args.max_train_minutes:g}-minute safety cap, at step {steps} of "
              f"{cfg.trainer.max_steps}: the figures below are of a shorter run than the demo's", flush=True)
    prompt_args = [a for p in PROMPTS for a in ("--prompt", p)]
    written = run("sample", [NAMI, "sample", *config, "--ckpt", str(run_dir), *prompt_args, "--stages",
                             "--out", str(run_dir / "demo_samples")], times, capture=True).split()  # fmt: skip
    grid = next(p for p in written if p.endswith("grid.png"))
    scores = json.loads(run("eval", [NAMI, "eval", *config, "--ckpt", str(run_dir), "--json"], times, True))
    bench = json.loads(run("bench", [NAMI, "bench", "sampling", *config, "--ckpt", str(run_dir), "--json"],
                           times, True))  # fmt: skip
    (run_dir / "eval.json").write_text(json.dumps(scores, indent=2) + "\n")
    (run_dir / "bench_sampling.json").write_text(json.dumps(bench, indent=2) + "\n")
    curves = eval_curves(run_dir / "tb", since=started)
    if curves:
        plot_curves(curves, run_dir / "eval_curve.png", f"{cfg.name}: GenEval-Shapes during training "
                    f"({cfg.eval.train_per_category} prompts per category)")  # fmt: skip
    total = time.perf_counter() - total

    print("\n== NAMI tiny demo: results")
    print(f"run directory      {run_dir}/ (checkpoints/, tb/, weights.safetensors, bridges.safetensors); "
          f"{steps} of {cfg.trainer.max_steps} steps")
    print(f"samples            {grid} and *-stages.png beside it (coarse to fine, each stage's x0 beside its end)")
    print(f"TensorBoard        .venv/bin/tensorboard --logdir {run_dir / 'tb'}")
    overall = curves.get("eval/overall", {})
    if overall:
        print("eval in training   overall " + ", ".join(f"{v:.2f} @ {s}" for s, v in sorted(overall.items()))
              + f" ({len(CATEGORIES) * cfg.eval.train_per_category} prompts each; {run_dir / 'eval_curve.png'})")
    print("GenEval-Shapes     " + "  ".join(f"{k}={scores[k]:.2f}" for k in
          ("single_object", "two_object", "counting", "colors", "position", "color_attr", "overall")))  # fmt: skip
    p = bench["progressive"]
    print(f"sampling speed     progressive {p['seconds']:.2f}s vs uniform {bench['uniform_s']:.2f}s: "
          f"{1 / p['measured_ratio']:.2f}x faster (measured ratio {p['measured_ratio']:.3f}, "
          f"FLOP model {p['predicted_ratio']:.3f})")  # fmt: skip
    print("wall time          " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {total / 60:.1f} min (setup not included)")  # fmt: skip


if __name__ == "__main__":
    main()
