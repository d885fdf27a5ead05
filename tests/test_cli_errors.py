"""Bad input is one line naming the key or file, exit code 2, before any compute (issue 13)."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from data_modules import ShardStream, StreamSpec, WorkerState, resolve_shards

from .data_fixtures import data_cfg, encode, flow_mix, good, member_offset, rgb_png, write_tar
from .safety_fixtures import TINY, cli, one_error_line, run_args


@pytest.mark.parametrize("seed", [str(2**63), "-1"])
def test_a_seed_out_of_range_is_one_line(seed, tmp_path, capsys):
    code, _, err = cli(capsys, "sample", TINY, "--ckpt", tmp_path, "--prompt", "x", f"--seed={seed}")
    assert code == 2 and "--seed" in one_error_line(err)


@pytest.mark.parametrize("guidance", ["nan", "inf", "-inf"])
def test_a_non_finite_guidance_is_one_line(guidance, tmp_path, capsys):
    code, _, err = cli(capsys, "sample", TINY, "--ckpt", tmp_path, "--prompt", "x", f"--cfg={guidance}")
    assert code == 2 and "sampler.guidance" in one_error_line(err)


def _unusable_shards(root):
    (root / "zero.tar").write_bytes(b"")
    (root / "text.tar").write_text("not a tar at all\n")
    return root


@pytest.fixture
def bad_dir(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    return _unusable_shards(root)


def test_training_on_shards_without_a_usable_sample_is_one_line(bad_dir, tmp_path, capsys):
    code, _, err = cli(capsys, "train", TINY, *run_args(tmp_path, bad_dir))
    line = one_error_line(err)
    assert code == 2 and "data.shards" in line and "no usable sample in 2 shard(s)" in line and "bad_shard 2" in line
    assert not (tmp_path / "tiny").exists()  # stopped before anything was written


def test_data_check_fails_when_nothing_is_usable(bad_dir, tmp_path, capsys):
    code, out, err = cli(capsys, "data", "check", TINY, f"data.shards={bad_dir}/*.tar", "--json")
    assert code == 2 and json.loads(out)["samples"] == 0 and "data.shards" in one_error_line(err)
    write_tar(tmp_path / "good.tar", [good("k0", 0), good("k1", 1)])
    code, _, err = cli(capsys, "data", "check", TINY, f"data.shards={tmp_path}/good.tar", "data.format=parquet")
    assert code == 2 and "no usable sample" in one_error_line(err)  # tars read as parquet: nothing usable
    code, out, _ = cli(capsys, "data", "check", TINY, f"data.shards={tmp_path}/good.tar", "--json")
    assert code == 0 and json.loads(out)["samples"] == 2


@pytest.mark.parametrize("url, package", [("s3://bucket/shards/*.tar", "s3fs"), ("gs://bucket/x.tar", "gcsfs")])
def test_a_missing_fsspec_driver_names_the_package(url, package, capsys):
    code, _, err = cli(capsys, "data", "check", TINY, f"data.shards={url}")
    assert code == 2 and f"pip install {package}" in one_error_line(err)


def test_an_unreachable_http_shard_is_one_line(capsys):
    code, _, err = cli(capsys, "data", "check", TINY, "data.shards=http://127.0.0.1:9/shard.tar")
    assert code == 2 and "127.0.0.1:9" in one_error_line(err)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + str(TINY) + "\nmodel:\n  width: 64\n  heads: [2, 4\nbridge: {}\n")
    code, _, err = cli(capsys, "info", bad)
    assert code == 2 and f"{bad}:5" in one_error_line(err)


def test_the_caption_field_of_tar_json_is_configurable(tmp_path):
    samples = [{"__key__": f"k{i}", "png": rgb_png(i), "json": json.dumps({"text": f"a caption {i}"}).encode()}
               for i in range(3)]  # fmt: skip
    write_tar(tmp_path / "s.tar", samples)

    def read(*overrides):
        cfg = data_cfg(str(tmp_path / "s.tar"), "data.num_workers=0", *overrides)
        spec = StreamSpec.from_config(cfg, resolve_shards(cfg.data.shards), train=False)
        state = WorkerState()
        return [s.caption for s in ShardStream(spec).samples(0, 1, state)], dict(state.skipped)

    assert read() == ([], {"no_caption": 3})
    assert read("data.caption_column=text") == ([f"a caption {i}" for i in range(3)], {})


def test_a_one_pixel_image_is_too_small_by_default(tmp_path):
    write_tar(tmp_path / "s.tar", [{"__key__": "dot", "png": encode(Image.new("RGB", (1, 1))), "txt": b"x"},
                                   good("fine", 1)])  # fmt: skip
    cfg = data_cfg(str(tmp_path / "s.tar"), "data.num_workers=0")
    assert cfg.min_image_side() == 4  # 1/8 of the 32 px resolution
    spec = StreamSpec.from_config(cfg, resolve_shards(cfg.data.shards), train=False)
    state = WorkerState()
    assert [s.key for s in ShardStream(spec).samples(0, 1, state)] == ["fine"]
    assert dict(state.skipped) == {"too_small": 1}


def test_a_truncated_shard_is_warned_once_and_counted_every_epoch(tmp_path, caplog):
    cut = write_tar(tmp_path / "cut.tar", [good(f"c{i}", i) for i in range(4)])
    cut.write_bytes(cut.read_bytes()[: member_offset(cut, "c2.png") + 50])
    cfg = data_cfg(str(cut), "data.num_workers=0", "data.batch_size=2", "data.shuffle_buffer=0")
    stream = ShardStream(StreamSpec.from_config(cfg, resolve_shards(cfg.data.shards), mix=flow_mix(cfg)))
    state = WorkerState()
    with caplog.at_level(logging.WARNING, logger="data_modules.stream"):
        samples = stream.samples(0, 1, state)
        for _ in range(2 * 3):  # three epochs of the two whole samples
            next(samples)
        next(samples)  # into the fourth epoch: the third cut has been met
    assert state.skipped["truncated"] == 3
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1
