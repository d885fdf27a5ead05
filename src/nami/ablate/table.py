"""summary.md: the paper-style table (per-category mean +- standard error over seeds, overall with its 95%
interval, the paired test against the reference arm, training and sampling cost), a per-run table, and
footnotes that say how every figure was measured."""

from __future__ import annotations

from ..eval.shapes import CATEGORIES
from .results import ArmSummary, check_pairing, finite
from .stats import ALPHA, CONFIDENCE

HEADINGS = {"single_object": "single", "two_object": "two obj.", "counting": "counting", "colors": "colors",
            "position": "position", "color_attr": "colour attr."}  # fmt: skip


def _num(value: float | None, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if finite(value) else "n/a"


def mean_cell(mean: float, se: float) -> str:
    """'0.920 ± 0.012', or the mean alone when there is one seed."""
    return f"{_num(mean)} ± {_num(se)}" if finite(se) else _num(mean)


def overall_cell(s: ArmSummary) -> str:
    low, high = s.overall_interval
    mean = f"**{_num(s.mean['overall'])}**"
    return f"{mean} [{_num(low)}, {_num(high)}]" if finite(low) else mean


def test_cells(s: ArmSummary, reference: str) -> tuple[str, str]:
    """(difference from the reference with its interval, verdict of the paired test)."""
    if s.test is None:
        return "(reference)", "(reference)"
    t = s.test
    diff = f"{t.difference:+.3f} [{t.low:+.3f}, {t.high:+.3f}]" if finite(t.low) else f"{t.difference:+.3f}"
    verdict = t.verdict()
    if verdict == "n/a":
        return diff, "n/a (needs 2 seeds)"
    word = {"no": "no", "higher": f"**yes, higher than {reference}**",
            "lower": f"**yes, lower than {reference}**"}
    return diff, f"{word[verdict]} (p = {t.p:.3f}, Holm {t.p_holm:.3f})"


def summary_table(summaries: list[ArmSummary]) -> str:
    """The main table, one row per arm, the reference first."""
    reference = summaries[0].arm
    head = ["arm", "steps", *HEADINGS.values(), "overall [95% CI]", f"Δ overall vs {reference} [95% CI]",
            "differs beyond noise?", "train s/step", "sampling time / uniform",
            "predicted (FLOPs)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        scores = [mean_cell(s.mean[c], s.stderr[c]) for c in CATEGORIES]
        speed = [_num(s.train_step_s), _num(s.sampling_ratio_measured), _num(s.sampling_ratio_predicted)]
        cells = [s.arm, f"{s.steps:.0f}", *scores, overall_cell(s), *test_cells(s, reference), *speed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(rows: list[dict]) -> str:
    """One line per arm x seed: steps, training wall time, overall with its binomial standard error."""
    head = ["arm", "seed", "steps", "train wall s", "overall ± SE (prompts)", "run directory"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        wall = f"{r['train_s']:.0f}"
        if r["train_resumed_from_step"]:  # the killed part's wall time is not known
            wall += f" (from step {r['train_resumed_from_step']})"
        lines.append(f"| {r['arm']} | {r['seed']} | {r['steps']} | {wall} | "
                     f"{mean_cell(r['overall'], r['overall_stderr'])} | {r['run_dir']} |")  # fmt: skip
    return "\n".join(lines)


def footnotes(rows: list[dict], summaries: list[ArmSummary], budget: str) -> list[str]:
    """How every figure of the table was measured, and the test (numbered under the table)."""
    r0, reference = rows[0], summaries[0].arm
    seeds = sorted({r["seed"] for r in rows})
    n = len(seeds)
    prompts = r0["eval_images"] // len(CATEGORIES)
    unpaired = check_pairing(rows)
    jobs = max(r["concurrent_jobs"] for r in rows)
    pairing = (f"NOT PAIRED for {', '.join(unpaired)}: the arms there were scored on different prompts."
               if unpaired else "Checked: every seed's arms share one prompt set (digest in results.csv).")
    return [
        f"Scores: GenEval-Shapes fraction correct, {prompts} prompts per category, {len(summaries)} arms x "
        f"{n} seeds ({', '.join(map(str, seeds))}), {budget}. Cells are the mean ± standard error over "
        "seeds (sample deviation / sqrt(n)); overall is the mean of the six categories, with its "
        f"{CONFIDENCE:.0%} t interval over seeds (mean ± t(0.975, n-1) x SE).",
        "Pairing: for seed s every arm trains from seed s (initialisation and data order) and is scored on "
        "the same prompts with the same sampling noise (eval seed E + 1000000 s), so arm and reference are "
        "compared seed by seed; each seed draws its own prompt set, so the spread over seeds covers the "
        f"choice of prompts as well as training. {pairing}",
        "Differs beyond noise: two-sided paired t-test over seeds on the per-seed difference in overall "
        f"score (arm - {reference}, df = n - 1 = {n - 1}), Holm-corrected across the {len(summaries) - 1} "
        f"comparisons with the reference; 'yes' when the corrected p < {ALPHA:.2f}. Over seeds, not over "
        "prompts: the training run is the unit of replication, and at this scale two seeds of one config can "
        "differ by more than the prompt sampling noise, so a bootstrap over prompts would count one seed's "
        f"luck as an effect. With {n} seeds only large differences reach p < {ALPHA:.2f}: 'no' means not "
        "shown, not equal.",
        "Timing: a separate serial pass after all training, one arm at a time, nothing else of this run "
        f"running (training ran {jobs} at a time). Train s/step: median of {r0['bench_repeats']} optimizer "
        "steps (`nami bench training`, a data.batch_size batch of random images; with a ratio schedule each "
        "phase weighted by the steps it ran). Sampling time / uniform: progressive over uniform sampling "
        "(one stage, every block, sampler.uniform_steps steps) of the same weights in the same process, batch "
        f"{r0['bench_batch']}, median of {r0['bench_repeats']} interleaved repeats on {r0['device']} "
        "(`nami bench sampling`); predicted: the FLOP model.",
    ]


def summary_markdown(rows: list[dict], summaries: list[ArmSummary], budget: str) -> str:
    notes = "".join(f"\n{i}. {note}" for i, note in enumerate(footnotes(rows, summaries, budget), 1))
    return (f"# Ablation: {len(summaries)} arms, reference {summaries[0].arm}\n\n{summary_table(summaries)}\n"
            f"{notes}\n\n![quality vs sampling time; per-category scores](summary.png)\n\n## Runs\n\n"
            f"{runs_table(rows)}\n")  # fmt: skip
