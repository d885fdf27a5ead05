"""`nami data synth`, `nami data check` and `nami bench data` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

from nami.cli import main

from .data_fixtures import BAD_SET_OPTIONS, BAD_SET_SKIPS, LEARNED_TEXT, TINY, bad_set
from .hf_fixtures import HF_BAD_SET_SKIPS, HF_OPTIONS, hf_bad_set


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_writes_img2dataset_shards_deterministically(tmp_path, capsys):
    for name in ("a", "b"):
        code, out, _ = _run(
            capsys, "data", "synth", "--out", tmp_path / name, "--num", 14, "--shards", 3, "--seed", 7
        )
        assert code == 0 and "wrote 14 samples in 3 shards" in out
    a, b = sorted((tmp_path / "a").glob("*.tar")), sorted((tmp_path / "b").glob("*.tar"))
    assert [p.name for p in a] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    code, out, _ = _run(
        capsys, "data", "synth", "--out", tmp_path / "c", "--num", 14, "--shards", 3, "--seed", 8
    )
    assert [p.read_bytes() for p in sorted((tmp_path / "c").glob("*.tar"))] != [p.read_bytes() for p in a]


@pytest.mark.parametrize("source", ["files", "hf"])
def test_check_reports_counts_and_exits_zero_on_bad_data(tmp_path, capsys, source):
    if source == "hf":
        path, expected = hf_bad_set(tmp_path)
        shards, skips = [f"data.shards={path}", *HF_OPTIONS], HF_BAD_SET_SKIPS
    else:
        paths, expected = bad_set(tmp_path)
        shards, skips = ["data.shards=[" + ",".join(map(str, paths)) + "]"], BAD_SET_SKIPS
    code, out, _ = _run(capsys, "data", "check", TINY, *LEARNED_TEXT, *shards, *BAD_SET_OPTIONS)
    assert code == 0
    assert f"samples      {len(expected)}" in out
    for reason, count in skips.items():
        assert f"{reason} {count}" in out
    keys = tmp_path / "keys.txt"
    argv = ["data", "check", TINY, *LEARNED_TEXT, *shards, *BAD_SET_OPTIONS, "--json", "--world-size", 2]
    code, out, _ = _run(capsys, *argv, "--keys-out", keys)
    report = json.loads(out)
    assert code == 0 and report["skipped"] == skips and report["duplicates"] == 0
    assert report["samples"] == report["unique"] == len(expected) and len(report["per_rank"]) == 2
    assert report["samples_per_s"] > 0
    assert sorted(keys.read_text().splitlines()) == sorted(expected)


def test_check_on_a_path_matching_nothing_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "*.tar"
    code, out, err = _run(capsys, "data", "check", TINY, *LEARNED_TEXT, f"data.shards={missing}")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(missing) in err and "data.shards" in err
    code, out, err = _run(capsys, "bench", "data", TINY, *LEARNED_TEXT, f"data.shards={missing}", "--json")
    assert code == 2 and out == "" and str(missing) in err


def test_bench_data_reports_both_rates_and_their_ratio(tmp_path, capsys):
    assert _run(capsys, "data", "synth", "--out", tmp_path, "--num", 120, "--shards", 4)[0] == 0
    argv = ["bench", "data", TINY, *LEARNED_TEXT, f"data.shards={tmp_path}/*.tar", "--json", "--samples", 300]
    code, out, _ = _run(capsys, *argv)
    report = json.loads(out)
    assert code == 0
    assert report["pipeline_samples_per_s"] > 0 and report["bare_decode_samples_per_s"] > 0
    expected = report["pipeline_samples_per_s"] / report["bare_decode_samples_per_s"]
    assert abs(report["ratio"] - expected) < 0.01 and report["samples"] == 300 and len(report["ratios"]) == 3


def test_progress_off_a_terminal_is_a_plain_line_at_intervals():
    """Under SLURM or nohup (no TTY) a bar would print nothing until the end: lines come every interval."""
    import io

    from data_modules.progress import Progress

    now = [0.0]
    out = io.StringIO()  # not a TTY
    with Progress("encode rank 0", stream=out, interval=30.0, clock=lambda: now[0]) as progress:
        for skipped in range(6):
            now[0] += 10.0
            progress.update(100, skipped)
    lines = out.getvalue().splitlines()
    assert lines == ["encode rank 0: 300 samples, 10.0 samples/s, 2 skipped (0:00:30 elapsed)",
                     "encode rank 0: 600 samples, 10.0 samples/s, 5 skipped (0:01:00 elapsed)"]  # fmt: skip


def test_check_progress_goes_to_stderr_and_json_stays_alone_on_stdout(tmp_path, capsys, monkeypatch):
    import data_modules.progress

    monkeypatch.setattr(data_modules.progress, "PLAIN_INTERVAL_S", 0.0)  # a line after every batch
    paths, expected = bad_set(tmp_path)
    shards = "data.shards=[" + ",".join(map(str, paths)) + "]"
    code, out, err = _run(capsys, "data", "check", TINY, *LEARNED_TEXT, shards, *BAD_SET_OPTIONS, "--json")
    assert code == 0 and json.loads(out)["samples"] == len(expected)  # stdout: the one JSON object
    progress = [line for line in err.splitlines() if line.startswith("data check: ")]
    assert progress and progress[-1].startswith(f"data check: {len(expected)} samples, ")
    assert f", {sum(BAD_SET_SKIPS.values())} skipped (" in progress[-1]  # the final counts, every reason
