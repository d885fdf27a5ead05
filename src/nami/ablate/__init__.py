"""`nami ablate`: the comparison tables of the paper at toy scale, from one command.

For every arm (a config file plus overrides) and seed: fit the bridges where the arm's kind has weights, train
with the same budget, score GenEval-Shapes on prompts and noise shared by all arms of that seed; then, one arm
at a time, time sampling against uniform sampling and the training step. Each arm x seed is an ordinary run
directory under DIR/runs/; finished work is recorded atomically and skipped when the command runs again.

plan.py (arms, seeds, budget, overrides), records.py (bookkeeping under DIR), execute.py (workers, --jobs,
the serial timing pass), worker.py (one unit of work in its own process), stats.py (standard errors, t
intervals, the paired test), results.py (results.csv, per-arm summaries), table.py (summary.md), plots.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .execute import run_plan
from .plan import Arm, ArmSeed, Budget, Plan, build_plan, make_arms
from .results import arm_run, collect_rows, read_csv, summarize, write_csv
from .table import summary_markdown


def write_outputs(plan: Plan) -> dict[str, Path]:
    """results.csv, summary.md and summary.png of a finished plan (derived from its records; rewritten)."""
    from .plots import write_summary_plot

    rows = collect_rows(plan)
    summaries = summarize(rows, plan.reference)
    paths = {name: plan.out / name for name in ("results.csv", "summary.md", "summary.png")}
    write_csv(rows, paths["results.csv"])
    partial = plan.out / ".summary.md.partial"
    partial.write_text(summary_markdown(rows, summaries, plan.budget.describe()))
    partial.replace(paths["summary.md"])
    write_summary_plot(summaries, paths["summary.png"])
    return paths


def ablate(plan: Plan, say: Callable[[str], None] = print) -> dict[str, Path]:
    """Run what is not done yet, then write the results."""
    run_plan(plan, say)
    return write_outputs(plan)


__all__ = ["Arm", "ArmSeed", "Budget", "Plan", "ablate", "arm_run", "build_plan", "collect_rows", "make_arms",
           "read_csv", "run_plan", "summarize", "summary_markdown", "write_csv", "write_outputs"]  # fmt: skip
