"""Running a plan: every arm x seed's quality work (bridges, training, GenEval-Shapes) as worker processes, up
to --jobs at a time, then a serial timing pass, one arm at a time; finished units are skipped.

Workers are processes (`python -m nami.ablate`), not calls in this one: each arm starts from a clean
interpreter (seeds, thread pools, allocator, caches), a crash stops one unit, and --jobs can run units side by
side. Nothing is timed while units run side by side: the timing pass starts after the last quality unit, and
the training wall times recorded during quality work say how many units shared the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import RunStopped
from .plan import Plan
from .records import PLAN_FILE, exclusive, prepare_out, read_json, start_record, write_json
from .worker import CONCURRENT_JOBS


@dataclass
class Unit:
    """One worker's job: quality work of an arm x seed, or the timing of an arm."""

    name: str
    kind: str  # quality | timing
    record: Path
    log: Path


def quality_units(plan: Plan, say: Callable[[str], None]) -> list[Unit]:
    units = []
    for run in plan.runs:
        record = start_record(plan.out / "arms" / f"{run.id}.json", run.spec())
        if record.get("done"):
            say(f"{run.id}: done earlier, skipped")
            continue
        log = plan.out / "logs" / f"{run.id}.log"
        units.append(Unit(run.id, "quality", plan.out / "arms" / f"{run.id}.json", log))
    return units


def timing_units(plan: Plan, say: Callable[[str], None]) -> list[Unit]:
    """One per arm, on the first seed's weights, with the steps that seed trained (for ratio phases)."""
    units = []
    for arm in plan.arms:
        run = plan.run(arm.name, plan.seeds[0])
        trained = read_json(plan.out / "arms" / f"{run.id}.json")["train"]["steps"]
        spec = {**run.spec(), "bench_repeats": plan.bench_repeats, "steps_trained": trained}
        path = plan.out / "timing" / f"{arm.name}.json"
        if start_record(path, spec).get("done"):
            say(f"{arm.name} timing: done earlier, skipped")
            continue
        units.append(Unit(f"{arm.name} timing", "timing", path, plan.out / "logs" / f"{arm.name}-timing.log"))
    return units


def _outcome(unit: Unit) -> str:
    record = read_json(unit.record)
    if unit.kind == "quality":
        train, ev = record["train"], record["eval"]
        return f"{train['steps']} steps in {train['seconds']:.0f}s, overall {ev['overall']:.3f}"
    s, t = record["sampling"]["progressive"], record["training"]
    return (f"sampling {s['measured_ratio']:.3f} of uniform (FLOP model {s['predicted_ratio']:.3f}), "
            f"training {t['step_s']:.3f}s/step")  # fmt: skip


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[-300:] if lines else "(empty log)"


def run_units(units: list[Unit], jobs: int, say: Callable[[str], None]) -> None:
    """Run `units` as worker processes, at most `jobs` at once; the first failure stops new starts."""
    env = dict(os.environ, **{CONCURRENT_JOBS: str(jobs)})
    if jobs > 1:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    queue, running, failed = list(units), {}, None
    total = len(units)
    try:
        while (queue and failed is None) or running:
            while queue and failed is None and len(running) < jobs:
                unit = queue.pop(0)
                with exclusive(unit.record.with_suffix(".lock"), unit.name):
                    pass  # an orphaned worker of a killed `nami ablate` still holds it: refuse to run twice
                unit.log.parent.mkdir(parents=True, exist_ok=True)
                with open(unit.log, "a") as log:
                    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {unit.kind} {unit.record}\n")
                    log.flush()
                    argv = [sys.executable, "-m", "nami.ablate", unit.kind, str(unit.record)]
                    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[proc] = (unit, time.time())
                say(f"[{total - len(queue)}/{total}] {unit.name}: started (log {unit.log})")
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                unit, started = running.pop(proc)
                if proc.returncode:
                    failed = failed or (unit, proc.returncode)
                    say(f"{unit.name}: FAILED with exit code {proc.returncode}")
                else:
                    say(f"{unit.name}: done in {time.time() - started:.0f}s: {_outcome(unit)}")
    finally:  # interrupted (Ctrl-C, SIGTERM): stop the workers; their records keep what they finished
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait()
    if failed:
        unit, code = failed
        raise RunStopped(f"{unit.name} failed (exit {code}): {_last_line(unit.log)} (log: {unit.log}); "
                         "fix it and rerun the same command to continue")  # fmt: skip


def _raise_on_sigterm():
    """SIGTERM ends this process through the `finally` blocks (workers stopped), as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def run_plan(plan: Plan, say: Callable[[str], None] = print) -> None:
    """Quality work of every arm x seed (parallel up to plan.jobs), then the timing pass (serial)."""
    prepare_out(plan.out)
    previous = _raise_on_sigterm()
    try:
        with exclusive(plan.out / ".lock", str(plan.out)):
            write_json(plan.out / PLAN_FILE, plan.describe())
            run_units(quality_units(plan, say), plan.jobs, say)
            timing = timing_units(plan, say)
            if timing:
                say("timing pass: one arm at a time; keep the machine otherwise idle (the table uses these)")
            run_units(timing, 1, say)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
