"""summary.png: quality against sampling time (one point per arm, 95% interval over seeds) and per-category
bars (mean +- standard error over seeds). The panels are separate functions so notebooks can draw them too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..eval.shapes import CATEGORIES
from .results import ArmSummary, finite
from .table import HEADINGS


def quality_vs_time(ax, summaries: list[ArmSummary]) -> None:
    """Overall score against the measured sampling time over uniform; hollow markers at the FLOP model's."""
    for i, s in enumerate(summaries):
        low, high = s.overall_interval
        mean = s.mean["overall"]
        yerr = [[mean - low], [high - mean]] if finite(low) else None
        x = s.sampling_ratio_measured
        ax.errorbar(x, mean, yerr=yerr, fmt="o", color=f"C{i}", capsize=4, label=s.arm)
        ax.plot(s.sampling_ratio_predicted, mean, "o", mfc="none", color=f"C{i}", alpha=0.6)
        ax.annotate(s.arm, (x, mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("sampling time / uniform (measured; hollow: FLOP model)")
    ax.set_ylabel("GenEval-Shapes overall (95% CI over seeds)")
    ax.set_title(f"Quality vs sampling time ({summaries[0].arm} is the reference)")
    right = max([1.0, *[max(s.sampling_ratio_measured, s.sampling_ratio_predicted) for s in summaries]])
    ax.set_xlim(0, right * 1.2)  # room for the labels right of the points


def category_bars(ax, summaries: list[ArmSummary]) -> None:
    """Grouped bars per category and overall, error bars one standard error over seeds."""
    names = [*CATEGORIES, "overall"]
    width = 0.8 / len(summaries)
    for i, s in enumerate(summaries):
        xs = np.arange(len(names)) + (i - (len(summaries) - 1) / 2) * width
        errors = [s.stderr[n] if finite(s.stderr[n]) else 0.0 for n in names]
        ax.bar(xs, [s.mean[n] for n in names], width, yerr=errors, capsize=2, color=f"C{i}", label=s.arm)
    ax.set_xticks(range(len(names)), [*HEADINGS.values(), "overall"], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction correct (± SE over seeds)")
    ax.set_title("Per category")
    ax.legend(fontsize=7, ncol=2)


def seed_lines(ax, rows: list[dict], reference: str) -> None:
    """Overall score per seed, one line per seed across the arms: the pairing the test relies on."""
    arms = [reference, *[a for a in dict.fromkeys(r["arm"] for r in rows) if a != reference]]
    for seed in sorted({r["seed"] for r in rows}):
        by_arm = {r["arm"]: r["overall"] for r in rows if r["seed"] == seed}
        ax.plot(range(len(arms)), [by_arm.get(a, np.nan) for a in arms], "o-", label=f"seed {seed}")
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GenEval-Shapes overall")
    ax.set_title("Each seed across the arms (paired)")
    ax.legend(fontsize=8)


def write_summary_plot(summaries: list[ArmSummary], path: Path) -> None:
    """Both panels side by side in one PNG (a bare Figure: no pyplot, so any backend or none will do)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 5))
    left, right = fig.subplots(1, 2)
    quality_vs_time(left, summaries)
    category_bars(right, summaries)
    fig.tight_layout()
    partial = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(partial, dpi=120)
    partial.replace(path)
