"""`nami ablate`: planning errors (one line, exit 2), the statistics against scipy, the table against the CSV,
and end to end (slow): two arms x two seeds, killed after the first arm x seed and resumed without redoing it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from nami.ablate import read_csv, summarize, write_csv
from nami.ablate.plan import scaled_ratio_schedule
from nami.ablate.records import prepare_out, start_record
from nami.ablate.stats import holm, mean_and_stderr, paired_t_test, t_interval
from nami.ablate.table import mean_cell, summary_markdown
from nami.ablate.worker import phase_lengths
from nami.cli import main
from nami.config import ConfigError, load
from nami.eval.shapes import CATEGORIES

from .ablation_fixtures import ARMS, FIRST, SEEDS, files_of
from .helpers import EXPERIMENTS

SCORES = (*CATEGORIES, "overall")


# ---- planning: bad input stops before any compute --------------------------------------------------------
@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "empty.tar"  # resolving data.shards only needs a file to match
    path.touch()
    return f"data.shards={path}"


@pytest.mark.parametrize("args, key", [
    (["seed=3"], "seed: is set by nami ablate"),
    (["trainer.max_steps=5"], "trainer.max_steps: is set by nami ablate"),
    (["--arm", "TINY", "eval.seed=1"], "eval.seed: is set by nami ablate"),
    (["name=x"], "name: names one arm"),
    (["TINY", "TINY"], "name: two arms are called tiny"),
    (["TINY", "--minutes", "1", "--jobs", "2"], "--jobs: a wall-clock budget"),
    (["TINY", "--reference", "nope"], "--reference: nope is not one of the arms"),
    (["TINY", "UNIFORM"], "--out: "),  # both arms load; the foreign file in --out stops it
], ids=["seed", "max_steps", "arm-eval-seed", "common-name", "twins", "minutes-jobs", "reference",
        "foreign-out"])  # fmt: skip
def test_bad_plans_are_one_line_and_exit_2(args, key, shard, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    paths = {"TINY": str(EXPERIMENTS / "tiny.yaml"),
             "UNIFORM": str(EXPERIMENTS / "ablations" / "uniform_baseline.yaml")}
    budget = [] if "--minutes" in args else ["--steps", "1"]
    assert main(["ablate", *[paths.get(a, a) for a in args], "--out", str(out), *budget, shard]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nami: error: {key}"), err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written


def test_a_record_made_with_another_plan_is_refused(tmp_path):
    path = tmp_path / "arms" / "tiny-seed0.json"
    spec = {"resolved": {"trainer.max_steps": 100}}
    start_record(path, spec)
    assert start_record(path, spec) == {"spec": spec}  # the same plan: the record is reused
    with pytest.raises(ConfigError, match=r"another plan \(resolved.trainer.max_steps: 100 -> 200\)"):
        start_record(path, {"resolved": {"trainer.max_steps": 200}})
    prepare_out(tmp_path / "new")  # a new directory is made; one with foreign files is refused
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").touch()
    with pytest.raises(ConfigError, match="did not write"):
        prepare_out(tmp_path / "foreign")


def test_ratio_phases_follow_the_step_budget():
    cfg = load(EXPERIMENTS / "ablations" / "sequential_training.yaml")  # phases at 700 and 1400 of 1700 steps
    override = scaled_ratio_schedule(cfg, 300)
    scaled = load(EXPERIMENTS / "ablations" / "sequential_training.yaml", [override, "trainer.max_steps=300"])
    assert [p.start_step for p in scaled.flow.ratio_schedule] == [0, 124, 247]
    assert phase_lengths(scaled, 300) == [([1.0, 0.0, 0.0], 124), ([0.0, 1.0, 0.0], 123),
                                          ([0.0, 0.0, 1.0], 53)]  # fmt: skip
    assert phase_lengths(load(EXPERIMENTS / "tiny.yaml"), 10) == [([1.0, 3.0, 1.0], 10)]


# ---- statistics against scipy ----------------------------------------------------------------------------
def test_statistics_match_scipy():
    x = [0.41, 0.45, 0.38, 0.44]
    mean, se = mean_and_stderr(x)
    assert mean == pytest.approx(np.mean(x)) and se == pytest.approx(stats.sem(x))
    expected = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert t_interval(x) == pytest.approx(expected)
    assert math.isnan(mean_and_stderr([0.4])[1]) and math.isnan(t_interval([0.4])[0])
    arm, ref = {0: 0.50, 1: 0.47, 2: 0.52}, {0: 0.42, 1: 0.43, 2: 0.41}
    test = paired_t_test(arm, ref)
    assert test.p == pytest.approx(stats.ttest_rel(list(arm.values()), list(ref.values())).pvalue)
    assert test.difference == pytest.approx(np.mean([0.08, 0.04, 0.11]))
    assert test.low < test.difference < test.high
    assert paired_t_test({0: 0.3, 1: 0.3}, {0: 0.3, 1: 0.3}).p == 1.0
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)


def _rows(values: dict[str, list[float]]) -> list[dict]:
    """Synthetic results rows: each arm's overall per seed, categories offset from it."""
    rows = []
    for arm, per_seed in values.items():
        for seed, overall in enumerate(per_seed):
            row = {"arm": arm, "seed": seed, "reference": arm == "ref", "steps": 10, "train_s": 5.0,
                   "train_resumed_from_step": 0, "run_dir": f"/runs/{arm}-seed{seed}", "overall": overall,
                   "overall_stderr": 0.02, "train_step_s": 0.3 + len(arm) / 100,
                   "sampling_ratio_measured": 0.48, "sampling_ratio_predicted": 0.465, "eval_images": 300, "prompt_digest": f"d{seed}",
                   "concurrent_jobs": 1, "bench_repeats": 3, "bench_batch": 32, "device": "cpu"}  # fmt: skip
            row.update({c: min(1.0, overall + 0.01 * i) for i, c in enumerate(CATEGORIES)})
            rows.append(row)
    return rows


def test_table_shows_the_csv_means_and_the_paired_verdict(tmp_path):
    values = {"ref": [0.42, 0.43, 0.41], "better": [0.60, 0.61, 0.62], "same": [0.43, 0.40, 0.42]}
    rows = _rows(values)
    from nami.ablate.results import COLUMNS

    full = [{**dict.fromkeys(COLUMNS), **r} for r in rows]
    write_csv(full, tmp_path / "results.csv")
    back = read_csv(tmp_path / "results.csv")
    assert [r["overall"] for r in back] == [r["overall"] for r in rows] and back[0]["seed"] == 0
    summaries = summarize(back)
    assert [s.arm for s in summaries] == ["ref", "better", "same"]
    table = summary_markdown(back, summaries, "10 training steps each")
    for arm, per_seed in values.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {arm} |"))
        for i, category in enumerate(CATEGORIES):
            column = [min(1.0, v + 0.01 * i) for v in per_seed]
            assert mean_cell(np.mean(column), stats.sem(column)) in line
        low, high = stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed))
        assert f"**{np.mean(per_seed):.3f}** [{low:.3f}, {high:.3f}]" in line
    assert "yes, higher than ref" in table.split("| better |")[1].splitlines()[0]
    assert "| no (p = " in table.split("| same |")[1].splitlines()[0]
    assert "paired t-test over seeds" in table and "Holm" in table


# ---- evaluation statistics -------------------------------------------------------------------------------
def test_eval_report_has_standard_errors_and_a_paired_prompt_set(tiny_cfg):
    from nami.eval import LARGE_PER_CATEGORY, prompt_set, prompts_per_category
    from nami.eval.report import evaluate_pipeline
    from nami.parts import build_parts
    from nami.sampling import Pipeline

    tiny_cfg.sampler.steps = [1, 1, 1]
    pipeline = Pipeline.from_config(build_parts(tiny_cfg, fitted=False), tiny_cfg)
    report = evaluate_pipeline(pipeline, tiny_cfg, per_category=2, progress=False)
    for category in CATEGORIES:
        p, n = report[category], report["counts"][category]["total"]
        assert n == 2 and report["stderr"][category] == pytest.approx(math.sqrt(p * (1 - p) / n))
    overall_se = math.sqrt(sum(report["stderr"][c] ** 2 for c in CATEGORIES)) / 6
    assert report["stderr"]["overall"] == pytest.approx(overall_se)
    assert report["prompt_set"] == {**report["prompt_set"], "name": "standard", "per_category": 2, "seed": 1000}
    tiny_cfg.eval.seed = 1001
    other = evaluate_pipeline(pipeline, tiny_cfg, per_category=2, progress=False)["prompt_set"]
    assert other["digest"] != report["prompt_set"]["digest"]
    assert prompt_set(50) == prompt_set(LARGE_PER_CATEGORY)[:300]  # the standard set starts the large one
    assert prompts_per_category("large", None, 50) == LARGE_PER_CATEGORY
    with pytest.raises(ConfigError, match="eval.prompt_set"):
        prompts_per_category("large", 7, 50)


# ---- end to end (tests/ablation_fixtures.py) -------------------------------------------------------------
# The end-to-end tests share the session fixture `tiny_ablation` with notebook 03: one xdist group, made once.
UNITS = [f"{arm}-seed{seed}" for seed in SEEDS for arm in ARMS]


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_killed_run_resumes_without_redoing_the_finished_arm(tiny_ablation):
    run = tiny_ablation
    assert f"{FIRST}: started" in run.killed_log and "wrote" not in run.killed_log  # killed before results
    assert f"{FIRST}: done earlier, skipped" in run.resumed_log and f"{FIRST}: started" not in run.resumed_log
    assert files_of(run.out, FIRST) == run.first_files  # not a byte or a timestamp changed
    for unit in UNITS[1:]:  # the one killed mid-way included
        assert run.resumed_log.count(f"{unit}: started") == 1 and f"{unit}: done in" in run.resumed_log
    for arm in ARMS:
        assert f"{arm} timing: done in" in run.resumed_log
    assert sorted(p.stem for p in (run.out / "arms").glob("*.json")) == sorted(UNITS)


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_results_csv_has_every_figure_of_every_arm_and_seed(tiny_ablation):
    import json

    rows = read_csv(tiny_ablation.out / "results.csv")
    assert sorted((r["arm"], r["seed"]) for r in rows) == sorted((a, s) for a in ARMS for s in SEEDS)
    for r in rows:
        assert r["reference"] == (r["arm"] == "tiny") and r["steps"] == 2 and r["eval_images"] == 6
        assert r["overall"] == pytest.approx(np.mean([r[c] for c in CATEGORIES]))
        assert r["eval_seed"] == 1000 + 1_000_000 * r["seed"] and r["train_s"] > 0
        assert r["train_step_s"] > 0 and r["sampling_uniform_s"] > 0 and r["sampling_progressive_s"] > 0
        run_dir = tiny_ablation.out / "runs" / f"{r['arm']}-seed{r['seed']}"
        report = json.loads((run_dir / "eval.json").read_text())
        assert report["overall"] == r["overall"] and report["prompt_set"]["digest"] == r["prompt_digest"]
    by = {(r["arm"], r["seed"]): r for r in rows}
    for seed in SEEDS:  # paired: both arms scored the same prompts; each seed its own
        assert by["tiny", seed]["prompt_digest"] == by["uniform_baseline", seed]["prompt_digest"]
    assert by["tiny", 0]["prompt_digest"] != by["tiny", 1]["prompt_digest"]
    for arm in ARMS:  # one timing pass per arm, on seed 0's weights
        assert by[arm, 0]["sampling_ratio_measured"] == by[arm, 1]["sampling_ratio_measured"]
        assert by[arm, 1]["timed_seed"] == 0
    assert by["uniform_baseline", 0]["sampling_ratio_predicted"] == pytest.approx(1.0)
    assert by["tiny", 0]["sampling_ratio_predicted"] < 0.6


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_summary_table_and_plot_hold_the_csv_figures(tiny_ablation):
    from PIL import Image

    rows = read_csv(tiny_ablation.out / "results.csv")
    table = (tiny_ablation.out / "summary.md").read_text()
    reference = {r["seed"]: r["overall"] for r in rows if r["arm"] == "tiny"}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        line = next(line for line in table.splitlines() if line.startswith(f"| {arm} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        for category in CATEGORIES:
            values = [r[category] for r in mine]
            assert mean_cell(np.mean(values), stats.sem(values)) in cells
        overall = [r["overall"] for r in mine]
        assert cells[8].startswith(f"**{np.mean(overall):.3f}**")
        assert cells[-3:] == [f"{mine[0][k]:.3f}" for k in ("train_step_s", "sampling_ratio_measured",
                                                           "sampling_ratio_predicted")]  # fmt: skip
        if arm != "tiny":
            differences = [r["overall"] - reference[r["seed"]] for r in mine]
            assert cells[9].startswith(f"{np.mean(differences):+.3f}")
            varies = np.ptp(differences) > 0
            p = stats.ttest_rel(overall, [reference[r["seed"]] for r in mine]).pvalue if varies else None
            same = np.mean(differences) == 0 if p is None else p >= 0.05
            expected = "no" if same else "**yes"
            assert cells[10].startswith(expected), cells[10]
    assert re.search(r"2 arms x 2 seeds \(0, 1\), 2 training steps each", table)
    image = Image.open(tiny_ablation.out / "summary.png")
    colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
    assert image.size == (1680, 600) and len(colours) > 50


def test_an_arm_killed_during_training_continues_from_its_step_checkpoint(tmp_path):
    """A worker that died mid-training left step checkpoints: the next one resumes there (trainer.resume=last)
    and records the step it continued from."""
    from data_modules.synth import write_shapes
    from nami.ablate.records import read_json, write_json
    from nami.ablate.worker import run_quality
    from nami.lit.runner import pretrain_bridges, train

    from .helpers import LEARNED_TEXT

    write_shapes(tmp_path / "shapes", num=48, shards=2, resolution=32)
    overrides = [*LEARNED_TEXT, f"data.shards={tmp_path}/shapes/*.tar", "data.batch_size=6", "data.num_workers=0",
                 f"trainer.default_root_dir={tmp_path}/runs", "trainer.accelerator=cpu", "trainer.precision=32-true",
                 "trainer.checkpoint_every=2", "bridge.fit_batches=2", "bridge.heldout_batches=1",
                 "log.sample_prompts=[a red circle]", "sampler.steps=[1,1,1]", "eval.per_category=1",
                 "name=tiny-seed0", "trainer.max_steps=4"]  # fmt: skip
    config = str(EXPERIMENTS / "tiny.yaml")
    pretrain_bridges(load(config, overrides))
    train(load(config, [*overrides, "trainer.max_steps=2"]))  # the part the killed worker finished
    record = tmp_path / "arms" / "tiny-seed0.json"
    write_json(record, {"spec": {"config": config, "overrides": overrides, "fit_bridges": True},
                        "bridges": {"seconds": 1.0, "heldout_mse": None}})  # fmt: skip
    run_quality(record)
    done = read_json(record)
    assert done["done"] and done["train"]["steps"] == 4 and done["train"]["resumed_from_step"] == 2
    assert done["eval"]["images"] == 6 and (tmp_path / "runs" / "tiny-seed0" / "eval.json").is_file()
