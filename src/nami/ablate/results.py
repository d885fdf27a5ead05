"""results.csv (one row per arm x seed, every figure) from the records, and the per-arm summary the table and
the plots show. Timing columns repeat on every seed row of an arm: they come from one serial timing pass per
arm (`timed_seed` says whose weights; the time of a sampler does not depend on the weights)."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import NamiConfig, load
from ..eval.shapes import CATEGORIES
from .plan import Plan
from .records import read_json
from .stats import PairedTest, holm, mean_and_stderr, paired_t_test, t_interval

SCORES = (*CATEGORIES, "overall")
COLUMNS = (
    "arm", "seed", "reference", "config", "run_dir", "budget", "budget_value", "steps", "train_s",
    "train_resumed_from_step", "train_s_per_step_run", "concurrent_jobs", "bridge_kind", "bridge_fit_s",
    *[c for s in SCORES for c in (s, f"{s}_stderr")], "eval_images", "eval_seed", "prompt_digest",
    "eval_sampling_s",
    "timed_seed", "device", "bench_batch", "bench_repeats", "sampling_uniform_s", "sampling_progressive_s",
    "sampling_ratio_measured", "sampling_ratio_predicted", "no_nesting_ratio_measured",
    "no_nesting_ratio_predicted", "bridge_transition_s", "renoise_transition_s", "train_step_s",
    "train_step_full_resolution_s", "train_step_ratio_measured", "train_step_ratio_predicted",
)  # fmt: skip
TEXT_COLUMNS = {"arm", "config", "run_dir", "budget", "bridge_kind", "prompt_digest", "device"}


def collect_rows(plan: Plan) -> list[dict]:
    """One row per arm x seed of the plan, from its finished records."""
    rows = []
    for run in plan.runs:
        quality = read_json(plan.out / "arms" / f"{run.id}.json")
        timing = read_json(plan.out / "timing" / f"{run.arm.name}.json")
        train, ev, resolved = quality["train"], quality["eval"], quality["spec"]["resolved"]
        sampling, training = timing["sampling"], timing["training"]
        resumed = train["resumed_from_step"]
        row = {
            "arm": run.arm.name, "seed": run.seed, "reference": run.arm.name == plan.reference,
            "config": str(run.arm.config), "run_dir": str(plan.out / "runs" / run.id),
            "budget": "minutes" if plan.budget.minutes is not None else "steps",
            "budget_value": plan.budget.minutes if plan.budget.minutes is not None else plan.budget.steps,
            "steps": train["steps"], "train_s": train["seconds"], "train_resumed_from_step": resumed,
            "train_s_per_step_run": train["seconds"] / max(train["steps"] - resumed, 1),
            "concurrent_jobs": train["concurrent_jobs"], "bridge_kind": resolved["bridge.kind"],
            "bridge_fit_s": quality.get("bridges", {}).get("seconds"),
            "eval_images": ev["images"], "eval_seed": ev["prompt_set"]["seed"],
            "prompt_digest": ev["prompt_set"]["digest"], "eval_sampling_s": ev["sampling_s"],
            "timed_seed": timing["spec"]["seed"], "device": sampling["device"],
            "bench_batch": sampling["batch"],
            "bench_repeats": timing["spec"]["bench_repeats"], "sampling_uniform_s": sampling["uniform_s"],
            "sampling_progressive_s": sampling["progressive"]["seconds"],
            "sampling_ratio_measured": sampling["progressive"]["measured_ratio"],
            "sampling_ratio_predicted": sampling["progressive"]["predicted_ratio"],
            "no_nesting_ratio_measured": sampling["no_nesting"]["measured_ratio"],
            "no_nesting_ratio_predicted": sampling["no_nesting"]["predicted_ratio"],
            "bridge_transition_s": sampling["bridge_transition_s"],
            "renoise_transition_s": sampling["renoise_transition_s"], "train_step_s": training["step_s"],
            "train_step_full_resolution_s": training["full_resolution_step_s"],
            "train_step_ratio_measured": training["measured_ratio"],
            "train_step_ratio_predicted": training["predicted_ratio"],
        }  # fmt: skip
        for score in SCORES:
            row[score], row[f"{score}_stderr"] = ev[score], ev["stderr"][score]
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    """results.csv, replaced atomically; floats at full precision (the table rounds, the CSV does not)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else repr(row[k]) if isinstance(row[k], float) else row[k]
                         for k in COLUMNS})  # fmt: skip
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(buffer.getvalue())
    os.replace(partial, path)


def read_csv(path: str | Path) -> list[dict]:
    """results.csv back as typed rows: numbers as float (seed, steps and counts as int), reference as bool."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict = {}
            for key, text in raw.items():
                if key in TEXT_COLUMNS:
                    row[key] = text
                elif key == "reference":
                    row[key] = text == "True"
                elif text == "":
                    row[key] = None
                else:
                    number = float(text)
                    written_as_int = number.is_integer() and "." not in text and "e" not in text
                    row[key] = int(number) if written_as_int else number
            rows.append(row)
    return rows


@dataclass
class ArmSummary:
    """One arm over its seeds: score means and standard errors, overall's interval, timings, paired test."""

    arm: str
    seeds: list[int]
    mean: dict[str, float]
    stderr: dict[str, float]
    overall_interval: tuple[float, float]
    steps: float
    train_step_s: float
    sampling_ratio_measured: float
    sampling_ratio_predicted: float
    test: PairedTest | None = None  # None for the reference arm
    per_seed_overall: dict[int, float] = field(default_factory=dict)


def summarize(rows: list[dict], reference: str | None = None) -> list[ArmSummary]:
    """Per-arm summaries in the rows' order; the reference arm (default: the row marked so) comes first."""
    reference = reference or next((r["arm"] for r in rows if r["reference"]), rows[0]["arm"])
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    arms.remove(reference)
    out = []
    for arm in [reference, *arms]:
        mine = [r for r in rows if r["arm"] == arm]
        means, errors = {}, {}
        for score in SCORES:
            means[score], errors[score] = mean_and_stderr([r[score] for r in mine])
        out.append(ArmSummary(
            arm, [r["seed"] for r in mine], means, errors, t_interval([r["overall"] for r in mine]),
            mean_and_stderr([r["steps"] for r in mine])[0], mine[0]["train_step_s"],
            mine[0]["sampling_ratio_measured"], mine[0]["sampling_ratio_predicted"],
            per_seed_overall={r["seed"]: r["overall"] for r in mine},
        ))  # fmt: skip
    ref = out[0].per_seed_overall
    for summary in out[1:]:
        summary.test = paired_t_test(summary.per_seed_overall, ref)
    for summary, p in zip(out[1:], holm([s.test.p for s in out[1:]])):
        summary.test.p_holm = p
    return out


def check_pairing(rows: list[dict]) -> list[str]:
    """Seeds whose arms were not scored on the same prompts and noise (empty when the arms are paired)."""
    seeds = sorted({r["seed"] for r in rows})
    return [f"seed {s}" for s in seeds if len({r["prompt_digest"] for r in rows if r["seed"] == s}) > 1]


def arm_run(out: str | Path, arm: str, seed: int) -> tuple[NamiConfig, Path]:
    """The config (file plus every override it ran with) and run directory of one arm x seed under `out`."""
    spec = read_json(Path(out) / "arms" / f"{arm}-seed{seed}.json")["spec"]
    cfg = load(spec["config"], spec["overrides"])
    return cfg, Path(cfg.trainer.default_root_dir) / cfg.name


def finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
