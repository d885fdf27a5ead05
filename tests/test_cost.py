"""FLOP model against torch's FlopCounterMode, and `nami info` for the NAMI-2B preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nami.config import load
from nami.models import build_model, build_text_encoder, forward_cost, predicted_ratio
from nami.perf.flops import count_flops

from .helpers import EXPERIMENTS, LEARNED_TEXT


@pytest.mark.parametrize("overrides", [[], ["model.stage_depths=[1,2,4]"], ["model.patch_size=2"]])
def test_flop_model_matches_flop_counter_on_tiny(overrides):
    cfg = load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT + overrides)
    model = build_model(cfg)
    emb = build_text_encoder(cfg.text_encoder)(["a red circle", "two blue squares"])
    for k, side in enumerate(cfg.stage_latent_sizes()):
        x, t = torch.randn(2, 3, side, side), torch.tensor([500.0, 700.0])
        with torch.no_grad():
            measured = count_flops(lambda: model(x, t, emb.states, emb.mask, emb.pooled, stage=k)) / 2
        predicted = forward_cost(cfg, k)
        assert abs(predicted.total - measured) <= 0.05 * measured, (k, predicted, measured)
        assert predicted.attention > 0 and predicted.linear > predicted.attention


def test_predicted_ratio_is_the_step_weighted_flop_ratio(tiny_cfg):
    per_stage = [forward_cost(tiny_cfg, k).total for k in range(3)]
    full = forward_cost(tiny_cfg, 2, nested=False).total
    assert forward_cost(tiny_cfg, 2, nested=False).blocks == tiny_cfg.model.num_blocks
    assert predicted_ratio(tiny_cfg, [10, 10, 10], 30) == pytest.approx(10 * sum(per_stage) / (30 * full))
    assert predicted_ratio(tiny_cfg, [10, 10, 10], 30, nesting=False) > predicted_ratio(tiny_cfg)


def test_info_json_for_nami_2b():
    nami = Path(sys.executable).parent / "nami"
    # run through a fresh parent whose only child is `nami info`, so its peak memory is the command's alone (this
    # worker's RUSAGE_CHILDREN would count every subprocess earlier tests ran in it)
    measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", measure, nami, "info", str(EXPERIMENTS / "nami_2b.yaml"), "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    for key in ("params_total", "params_per_stage", "stage_depths", "tokens_per_stage", "flops_per_step_per_stage",
                "start_sigmas", "end_sigmas", "model_time_windows", "predicted_ratio"):
        assert key in info
    assert 2.0e9 <= info["params_total"] <= 2.2e9
    assert info["stage_depths"] == [9, 16, 22]
    assert info["tokens_per_stage"] == [256, 1024, 4096]
    assert info["predicted_ratio"] == pytest.approx(0.40, abs=0.02)
    assert info["params_per_stage"][-1] == info["params_total"]
    assert info["start_sigmas"] == pytest.approx([1.0, 0.8002, 0.5007], abs=1e-3)
    # counted on the meta device: the child never held the 8.5 GB of float32 weights
    assert int(out.stderr.split()[-1]) < 2_000_000  # KiB
