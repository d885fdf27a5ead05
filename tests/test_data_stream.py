"""Bad inputs are skipped and counted by reason, never fatal; good samples and metadata come out exact."""

from __future__ import annotations

import pytest
import torch

from data_modules import ShardStream, StreamSpec, WorkerState
from data_modules.check import check_data

from .data_fixtures import BAD_SET_OPTIONS, BAD_SET_REPAIRS, BAD_SET_SKIPS, bad_set, data_cfg
from .hf_fixtures import HF_BAD_SET_SKIPS, HF_OPTIONS, hf_bad_set


def _bad_cfg(root, source, *overrides):
    """(config over the bad set of `source`, its good keys, expected skips, expected repairs)."""
    if source == "hf":
        path, expected = hf_bad_set(root)
        return data_cfg(str(path), *BAD_SET_OPTIONS, *HF_OPTIONS, *overrides), expected, HF_BAD_SET_SKIPS, {}
    paths, expected = bad_set(root)
    return data_cfg(paths, *BAD_SET_OPTIONS, *overrides), expected, BAD_SET_SKIPS, BAD_SET_REPAIRS


def _eval_samples(cfg):
    """key -> (caption, metadata, image) over one pass in this process."""
    from data_modules import resolve_shards

    spec = StreamSpec.from_config(cfg, resolve_shards(cfg.data.shards), train=False)
    state = WorkerState()
    out = {}
    for batch in ShardStream(spec).batches(0, 1, state):
        for caption, key, meta, image in zip(
            batch.captions[0], batch.keys[0], batch.metadata[0], batch.images[0]
        ):
            assert key not in out
            out[key] = (caption, meta, image)
    return out, state


@pytest.mark.parametrize("source", ["files", "hf"])
def test_every_bad_class_is_skipped_with_its_reason(tmp_path, source):
    cfg, expected, skips, repairs = _bad_cfg(tmp_path, source, "data.num_workers=2")
    keys = tmp_path / "keys.txt"
    report = check_data(cfg, world_size=1, keys_out=keys)
    assert report["skipped"] == skips
    assert report["repaired"] == repairs
    assert report["samples"] == len(expected) and report["duplicates"] == 0
    assert sorted(keys.read_text().splitlines()) == sorted(expected)


@pytest.mark.parametrize("source", ["files", "hf"])
def test_split_reports_each_skip_once(tmp_path, source):
    """Shared shards (3 ranks x 2 workers over 4 shards; hf: 3) still count every skipped sample exactly once."""
    cfg, expected, skips, _ = _bad_cfg(tmp_path, source, "data.num_workers=2")
    report = check_data(cfg, world_size=3)
    assert report["skipped"] == skips
    assert report["samples"] == report["unique"] == len(expected)
    assert sum(r["samples"] for r in report["per_rank"]) == len(expected)


def test_metadata_captions_and_images_are_exact(tmp_path):
    paths, expected = bad_set(tmp_path)
    samples, state = _eval_samples(data_cfg(paths, *BAD_SET_OPTIONS, "data.batch_size=4"))
    assert set(samples) == set(expected)
    for key, meta in expected.items():
        assert samples[key][1] == meta, key  # json keys first seen after sample 5, floats to the last digit
    late = samples["mode_rgb_jpg"][1]["late_key"]["ref_exps"][0]
    assert late[2] == 1e-300 and late[3] == 2.5e300 and late[4] == 0.30000000000000004
    assert samples["late_good"][1]["score"] == 0.1 + 0.2
    assert samples["utf8_latin1"][0] == "caf\ufffd au lait"  # kept, invalid byte replaced
    assert samples["late_good"][0] == "caption late_good"  # .txt wins over json["caption"]
    assert samples["mode_l_png"][0] == "mode l.png"  # json["caption"] when there is no .txt
    assert samples["pq_0"][0] == "row zero" and samples["pq_0"][1]["tags"] == ["a", "b"]
    assert any(k.endswith("rows.parquet:3") for k in samples)  # no key column value: <file>:<row>
    for _, _, image in samples.values():
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert -1.0 <= image.min() and image.max() <= 1.0
    assert dict(state.skipped) == BAD_SET_SKIPS


def test_truncated_tar_keeps_every_sample_before_the_cut(tmp_path):
    paths, _ = bad_set(tmp_path)
    samples, state = _eval_samples(data_cfg([paths[1]]))
    assert sorted(samples) == ["cut_0", "cut_1", "cut_2"]
    assert dict(state.skipped) == {"truncated": 1}
