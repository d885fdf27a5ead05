"""`make demo`: the tiny NAMI end to end with the real commands, each timed, then the headline figures.

    .venv/bin/python scripts/demo.py [--config experiments/tiny.yaml] [--train-minutes 10] [key=value ...]

Steps: write GenEval-Shapes shards (unless present), fit the bridges, train the tiny config for a fixed wall-time
budget, sample a grid for fixed prompts with stage dumps, score GenEval-Shapes, benchmark sampling.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/tiny.yaml")
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--data-dir", default="data/geneval_shapes")
    parser.add_argument("--samples", type=int, default=20000, help="GenEval-Shapes samples to write")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every step")
    args = parser.parse_args()

    from nami.config import load

    overrides = [f"data.shards={args.data_dir}/*.tar", *args.overrides]
    cfg = load(REPO / args.config, overrides)
    run_dir = Path(cfg.trainer.default_root_dir) / cfg.name
    config = [args.config, *overrides]
    times: dict[str, float] = {}
    total = time.perf_counter()

    if not (REPO / args.data_dir / ".complete").exists():
        run("data", [NAMI, "data", "synth", "--out", args.data_dir, "--num", str(args.samples), "--shards", "8",
                     "--resolution", str(cfg.resolution)], times)  # fmt: skip
        (REPO / args.data_dir / ".complete").touch()
    run("bridges", [NAMI, "pretrain-bridge", *config], times)
    seconds = int(args.train_minutes * 60)
    budget = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    run("train", [NAMI, "train", *config, f"trainer.max_time={budget}"], times)
    prompt_args = [a for p in PROMPTS for a in ("--prompt", p)]
    written = run("sample", [NAMI, "sample", *config, "--ckpt", str(run_dir), *prompt_args, "--stages",
                             "--out", str(run_dir / "demo_samples")], times, capture=True).split()  # fmt: skip
    grid = next(p for p in written if p.endswith("grid.png"))
    scores = json.loads(run("eval", [NAMI, "eval", *config, "--ckpt", str(run_dir), "--json"], times, True))
    bench = json.loads(run("bench", [NAMI, "bench", "sampling", *config, "--ckpt", str(run_dir), "--json"],
                           times, True))  # fmt: skip
    (run_dir / "eval.json").write_text(json.dumps(scores, indent=2) + "\n")
    (run_dir / "bench_sampling.json").write_text(json.dumps(bench, indent=2) + "\n")
    total = time.perf_counter() - total

    print("\n== NAMI tiny demo: results")
    print(f"run directory      {run_dir}/ (checkpoints/, tb/, weights.safetensors, bridges.safetensors)")
    print(f"samples            {grid} and *-stages.png beside it (coarse to fine)")
    print(f"TensorBoard        .venv/bin/tensorboard --logdir {run_dir / 'tb'}")
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
