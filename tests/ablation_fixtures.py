"""A tiny `nami ablate` (tiny vs uniform_baseline, seeds 0 and 1, two training steps each), killed after its
first arm x seed is done and run again to the end: what test_ablate.py checks and what notebook 03 reads.

Sampling uses 1 step per stage (tiny) and 3 steps (uniform) and fp32 (bf16 autocast on CPUs that have it is
seconds slower per call at these sizes) so scoring and timing take seconds; the rest is the real path: worker
processes, bridge fitting, training, GenEval-Shapes, the serial timing pass.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .helpers import EXPERIMENTS, LEARNED_TEXT, nami_command

SEEDS = (0, 1)
ARMS = ("tiny", "uniform_baseline")
FIRST = "tiny-seed0"  # the plan runs seed-major: tiny-seed0, uniform_baseline-seed0, tiny-seed1, ...


@dataclass
class KilledAndResumed:
    out: Path
    killed_log: str  # what the killed invocation printed
    resumed_log: str  # what the second invocation printed
    first_files: dict[str, tuple[int, str]]  # FIRST's files (mtime_ns, sha256) right after the kill


def ablate_argv(out: Path, shards: str, jobs: int) -> list[str]:
    common = [*LEARNED_TEXT, f"data.shards={shards}", "data.batch_size=6", "data.num_workers=0",
              "trainer.accelerator=cpu", "trainer.precision=32-true", "bridge.fit_batches=2",
              "bridge.heldout_batches=1", "log.sample_prompts=[a red circle]", "eval.batch_size=3",
              "sampler.uniform_steps=3"]  # fmt: skip
    return nami_command(
        "ablate", "--arm", EXPERIMENTS / "tiny.yaml", "sampler.steps=[1,1,1]",
        "--arm", EXPERIMENTS / "ablations" / "uniform_baseline.yaml", "sampler.steps=[3]",
        "--seeds", ",".join(map(str, SEEDS)), "--steps", "2", "--eval-num", "1", "--bench-repeats", "1",
        "--out", out, "--jobs", str(jobs), *common,
    )  # fmt: skip


def files_of(out: Path, unit: str) -> dict[str, tuple[int, str]]:
    """Every file a finished arm x seed owns (its run directory, record and log): mtime and content hash."""
    paths = [*sorted((out / "runs" / unit).rglob("*")), out / "arms" / f"{unit}.json",
             out / "logs" / f"{unit}.log"]
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in paths if p.is_file()}  # fmt: skip


def _done(record: Path) -> bool:
    return record.is_file() and '"done": true' in record.read_text()


def run_killed_then_resumed(root: Path) -> KilledAndResumed:
    from data_modules.synth import write_shapes

    write_shapes(root / "shapes", num=96, shards=2, resolution=32)
    shards, out = f"{root}/shapes/*.tar", root / "ablation"
    log_path = root / "killed.log"
    with open(log_path, "w") as log:  # its own session: the kill takes the workers down with it
        proc = subprocess.Popen(ablate_argv(out, shards, jobs=1), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while not _done(out / "arms" / f"{FIRST}.json"):
            assert proc.poll() is None, f"nami ablate exited early:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{FIRST} did not finish:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-way: the next arm x seed has started or is about to
        proc.wait()
    first_files = files_of(out, FIRST)
    resumed = subprocess.run(ablate_argv(out, shards, jobs=2), capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return KilledAndResumed(out, log_path.read_text(), resumed.stdout, first_files)
