"""One unit of `nami ablate` work in its own process: `python -m nami.ablate quality|timing RECORD`.

quality: fit the bridges (when the arm's kind has weights), train, score GenEval-Shapes; each step is recorded
    in the arm x seed's record as it finishes, so a killed worker continues with the first step not recorded
    (training itself continues from its newest step checkpoint).
timing: `nami bench sampling` (uniform, progressive and no-nesting samplers on the same weights, interleaved
    in this one process) and `nami bench training` for one arm; `nami ablate` runs these one at a time.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from ..config import ConfigError, NamiConfig, load
from .records import exclusive, read_json, write_json

CONCURRENT_JOBS = "NAMI_ABLATE_JOBS"  # how many workers ran side by side (their wall times shared the CPU)


def checkpoint_steps(run) -> list[int]:
    """The steps of a run directory's complete step checkpoints, oldest first."""
    return [step for step, _ in run.step_checkpoints()]


def _compact_eval(report: dict) -> dict:
    """What the results table needs from a `nami eval` report, and each prompt's 0/1 (for paired analyses)."""
    from ..eval.shapes import CATEGORIES

    keep = ("overall", "stderr", "counts", "images", "sampling_s", "prompt_set", *CATEGORIES)
    return {**{k: report[k] for k in keep}, "correct": [int(r["correct"]) for r in report["results"]]}


def run_quality(path: Path) -> None:
    from ..artifacts import RunDir
    from ..eval.report import evaluate_pipeline
    from ..lit.runner import pretrain_bridges, train
    from ..sampling import Pipeline

    record = read_json(path)
    spec = record["spec"]
    cfg = load(spec["config"], spec["overrides"])
    run = RunDir.named(cfg)
    if spec["fit_bridges"] and "bridges" not in record:
        start = time.perf_counter()
        report = pretrain_bridges(cfg).report
        record["bridges"] = {"seconds": time.perf_counter() - start, "heldout_mse": report.get("heldout_mse")}
        write_json(path, record)
    if "train" not in record:
        resumed_from = (checkpoint_steps(run) or [0])[-1]
        start = time.perf_counter()  # auto: a killed unit continues from its newest checkpoint, if it wrote one
        train(load(spec["config"], [*spec["overrides"], "trainer.resume=auto"]))
        seconds = time.perf_counter() - start
        steps = (checkpoint_steps(run) or [0])[-1]
        # The wall time covers this process's part only: steps before `resumed_from` ran in a killed one.
        record["train"] = {"steps": steps, "seconds": seconds, "resumed_from_step": resumed_from,
                           "max_time": cfg.trainer.max_time,
                           "concurrent_jobs": int(os.environ.get(CONCURRENT_JOBS, "1"))}  # fmt: skip
        write_json(path, record)
    if "eval" not in record:
        report = evaluate_pipeline(Pipeline.from_weights(cfg, run.path), cfg, progress=False)
        write_json(run.path / "eval.json", report)  # what `nami eval --json --per-image` prints
        record["eval"] = _compact_eval(report)
        write_json(path, record)
    record["done"] = True
    write_json(path, record)


def phase_lengths(cfg: NamiConfig, steps: int) -> list[tuple[list[float], int]]:
    """The stage ratios in force during `steps` training steps, each with its number of steps."""
    from ..flow import StageMix

    return StageMix.from_config(cfg.flow).phase_lengths(max(steps, 1))


def training_step_times(cfg: NamiConfig, steps: int, repeats: int) -> dict:
    """`nami bench training` per ratio phase, weighted by the steps each phase ran: a schedule that trains
    only the coarse stage at first costs less per step then (bench_training alone times the first phase)."""
    from ..perf.bench import bench_training

    phases, total = [], 0
    for ratios, length in phase_lengths(cfg, steps):
        flow = replace(cfg.flow, stage_ratios=ratios, ratio_schedule=[])
        phases.append({"ratios": ratios, "steps": length, **bench_training(replace(cfg, flow=flow), repeats)})
        total += length

    def weighted(key: str) -> float:
        return sum(p[key] * p["steps"] for p in phases) / total

    return {"step_s": weighted("joint_step_s"), "full_resolution_step_s": weighted("full_resolution_step_s"),
            "measured_ratio": weighted("measured_ratio"), "predicted_ratio": weighted("predicted_ratio"),
            "batch": cfg.data.batch_size, "repeats": repeats, "phases": phases}  # fmt: skip


def run_timing(path: Path) -> None:
    from ..artifacts import RunDir
    from ..perf.bench import bench_sampling
    from ..sampling import Pipeline

    record = read_json(path)
    spec = record["spec"]
    cfg = load(spec["config"], spec["overrides"])
    pipeline = Pipeline.from_weights(cfg, RunDir.named(cfg).path)
    record["sampling"] = bench_sampling(cfg, pipeline, batch=cfg.eval.batch_size, repeats=spec["bench_repeats"])
    record["training"] = training_step_times(cfg, spec["steps_trained"], spec["bench_repeats"])
    record["done"] = True
    write_json(path, record)


def main(argv: list[str]) -> int:
    from ..sampling.precision import flush_denormals

    kind, path = argv[0], Path(argv[1])
    flush_denormals()  # as the `nami` commands that run the networks do
    try:
        with exclusive(path.with_suffix(".lock"), str(path)):
            (run_quality if kind == "quality" else run_timing)(path)
    except ConfigError as err:
        print(f"nami: error: {err}", file=sys.stderr)
        return 2
    except Exception:  # the parent reports the unit and points at this log
        traceback.print_exc()
        return 1
    return 0
