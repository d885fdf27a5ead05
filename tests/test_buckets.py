"""Aspect-ratio buckets (`data.buckets`): the table every stage grid of which is whole, the nearest bucket, the
FLOP model and `nami info` per bucket, and one-line refusals of bad tables."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from nami.config import load
from nami.config.buckets import (
    AUTO_SHORT_SIDES,
    MAX_BUCKETS,
    Bucket,
    auto_buckets,
    bucket_table,
    grid_step,
    nearest_bucket,
    stage_latent_shapes,
)
from nami.models import build_model, build_text_encoder, forward_cost, image_tokens, predicted_ratio
from nami.perf.flops import count_flops

from .helpers import EXPERIMENTS, LEARNED_TEXT, nami_command

CONFIGS = ["tiny.yaml", "nami_0.6b.yaml", "nami_2b.yaml", "nami_2b_official.yaml"]


def test_square_is_the_resolution_alone_and_the_default():
    cfg = load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT)
    assert cfg.data.buckets == "square"
    assert bucket_table(cfg) == [Bucket(32, 32)]
    assert stage_latent_shapes(cfg, 32, 32) == [(s, s) for s in cfg.stage_latent_sizes()]
    assert all(image_tokens(cfg, k, (32, 32)) == image_tokens(cfg, k) for k in range(3))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("resolution", [None, "2x"])
def test_auto_buckets_keep_every_stage_grid_whole(name, resolution):
    overrides = ["data.buckets=auto"]
    if resolution:
        overrides.append(f"resolution={2 * load(EXPERIMENTS / name).resolution}")
    cfg = load(EXPERIMENTS / name, overrides)
    table, step, area, k = bucket_table(cfg), grid_step(cfg), cfg.resolution**2, cfg.num_stages
    assert Bucket(cfg.resolution, cfg.resolution) in table and len(table) <= 2 * AUTO_SHORT_SIDES - 1
    assert [b.aspect for b in table] == sorted(b.aspect for b in table)
    assert min(b.aspect for b in table) == 0.25 and max(b.aspect for b in table) == 4.0  # 1:4 to 4:1
    for b in table:
        assert Bucket(b.width, b.height) in table  # portrait and landscape alike
        assert b.height % step == 0 and b.width % step == 0
        assert 0.9 * area <= b.pixels <= area  # about the square's pixels, never more
        shapes = b.latent_shapes(cfg)
        for s, (h, w) in enumerate(shapes):  # whole patches at every stage, each stage twice the one before
            assert h % cfg.model.patch_size == 0 and w % cfg.model.patch_size == 0
            assert (h * 2 ** (k - 1 - s), w * 2 ** (k - 1 - s)) == shapes[-1]
        assert shapes[-1] == (b.height // cfg.autoencoder.downsample, b.width // cfg.autoencoder.downsample)


def test_auto_at_1024_px_on_a_64_px_grid_holds_the_familiar_sizes():
    table = auto_buckets(1024, 64)
    names = {b.name for b in table}
    for h, w in [(1024, 1024), (896, 1152), (832, 1216), (768, 1344), (704, 1472), (512, 2048)]:
        assert f"{h}x{w}" in names and f"{w}x{h}" in names
    assert len(table) == 17
    thin = auto_buckets(1024, 16)  # a finer grid: still at most AUTO_SHORT_SIDES shorter sides
    assert len(thin) == 17 and Bucket(1024, 1024) in thin


def test_nearest_bucket_on_a_log_scale():
    table = auto_buckets(1024, 64)
    assert nearest_bucket(table, 1000, 1000) == Bucket(1024, 1024)
    assert nearest_bucket(table, 500, 1000) == Bucket(704, 1472)  # 1:2 landscape -> 2.09
    assert nearest_bucket(table, 1000, 500) == Bucket(1472, 704)  # and its portrait twin
    assert nearest_bucket(table, 10, 1000) == Bucket(512, 2048)  # beyond the table: its widest
    for b in table:
        assert nearest_bucket(table, b.height, b.width) == b
    tie = [Bucket(32, 32), Bucket(16, 64), Bucket(64, 16)]  # 1:2 lies as far (log scale) from 1:1 as from 1:4
    assert nearest_bucket(tie, 1, 2) == Bucket(32, 32)  # a tie goes to the larger bucket
    with pytest.raises(ValueError):
        nearest_bucket(table, 0, 10)


def test_an_explicit_list_is_sorted_by_aspect():
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "data.buckets=[[32,32],[16,64],[48,16]]"])
    assert bucket_table(cfg) == [Bucket(48, 16), Bucket(32, 32), Bucket(16, 64)]
    assert Bucket(48, 16).latent_shapes(cfg) == [(12, 4), (24, 8), (48, 16)]


@pytest.mark.parametrize("size", [(16, 64), (48, 16)])
def test_flop_model_matches_the_flop_counter_on_a_rectangular_bucket(size):
    cfg = load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT)
    model = build_model(cfg)
    emb = build_text_encoder(cfg.text_encoder)(["a red circle", "two blue squares"])
    for k, (h, w) in enumerate(stage_latent_shapes(cfg, *size)):
        x, t = torch.randn(2, 3, h, w), torch.tensor([500.0, 700.0])
        with torch.no_grad():
            measured = count_flops(lambda: model(x, t, emb.states, emb.mask, emb.pooled, stage=k)) / 2
        predicted = forward_cost(cfg, k, size=size)
        assert predicted.image_tokens == (h // 4) * (w // 4)
        assert abs(predicted.total - measured) <= 0.05 * measured, (k, predicted, measured)
    # fewer pixels than the square (48 x 16 = 768 < 1024): cheaper, and the progressive ratio is its own
    if size == (48, 16):
        assert forward_cost(cfg, 2, size=size).total < forward_cost(cfg, 2).total
        assert predicted_ratio(cfg, size=size) != predicted_ratio(cfg)


def test_nami_info_json_lists_the_buckets_with_tokens_and_flops_per_stage():
    result = subprocess.run(nami_command("info", EXPERIMENTS / "tiny.yaml", *LEARNED_TEXT, "resolution=64",
                                         "data.buckets=auto", "--json"), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "resolution=64", "data.buckets=auto"])
    assert [(b["height"], b["width"]) for b in info["buckets"]] == [(b.height, b.width) for b in bucket_table(cfg)]
    assert [(b["height"], b["width"]) for b in info["buckets"]] == [(128, 32), (80, 48), (64, 64), (48, 80), (32, 128)]
    for b in info["buckets"]:
        size = (b["height"], b["width"])
        assert b["tokens_per_stage"] == [image_tokens(cfg, k, size) for k in range(3)]
        # guidance 5 doubles every step's batch
        assert b["flops_per_step_per_stage"] == [2 * forward_cost(cfg, k, size=size).total for k in range(3)]
        assert b["predicted_ratio"] == pytest.approx(predicted_ratio(cfg, size=size))
        assert b["latent_shapes"][-1] == list(size)
    square = next(b for b in info["buckets"] if b["height"] == b["width"])
    assert square["flops_per_step_per_stage"] == info["flops_per_step_per_stage"]
    text = subprocess.run(nami_command("info", EXPERIMENTS / "tiny.yaml", *LEARNED_TEXT, "data.buckets=auto"),
                          capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert "3 aspect-ratio buckets" in text and "16 x 64" in text
    plain = subprocess.run(nami_command("info", EXPERIMENTS / "tiny.yaml", *LEARNED_TEXT, "--json"),
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "buckets" not in json.loads(plain.stdout)  # square: the report as before


TOO_MANY = "[" + ",".join(f"[16,{16 * (i % 4 + 1)}]" for i in range(MAX_BUCKETS + 1)) + "]"


@pytest.mark.parametrize("value, needles", [
    ("[[33,64]]", ["data.buckets[0] height", "off the stage grid", "multiples of 16", "nearest valid: 32 or 48"]),
    ("[[32,32],[16,70]]", ["data.buckets[1] width", "nearest valid: 64 or 80"]),
    ("[[64,64]]", ["data.buckets[0]", "4,096 pixels, more than resolution^2 = 1,024", "memory"]),
    (TOO_MANY, ["data.buckets", f"at most {MAX_BUCKETS}", "pending batch per bucket"]),
    ("[[32,32],[32,32]]", ["data.buckets[1]", "listed twice"]),
    ("[32,32]", ["data.buckets[0]", "[height, width]"]),
    ("wide", ["data.buckets", "square, auto or a list"]),
])  # fmt: skip
def test_bad_tables_are_one_line_and_exit_2(value, needles, capsys):
    from nami.cli import main

    code = main(["info", str(EXPERIMENTS / "tiny.yaml"), *LEARNED_TEXT, f"data.buckets={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("nami: error: "), err
    assert all(n in err for n in needles), err
