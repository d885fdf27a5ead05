"""Stage boundaries, corrected starts and model-time windows (DESIGN section 3); renoise: test_bridges_renoise.py."""

from __future__ import annotations

import math

import pytest
import torch

from nami.config import load
from nami.flow import PyramidSchedule

from .helpers import EXPERIMENTS

THIRDS = PyramidSchedule((0.0, 1 / 3, 2 / 3, 1.0), gamma=1 / 3)


def test_thirds_start_and_end_sigmas():
    assert THIRDS.start_sigmas == pytest.approx([1.0, 0.8002, 0.5007], abs=1e-3)
    assert THIRDS.end_sigmas == pytest.approx([0.667, 0.334, 0.0], abs=1e-9)
    assert THIRDS.original_starts == pytest.approx([1.0, 0.667, 0.334], abs=1e-9)


def test_thirds_model_time_windows():
    expected = [(1000, 744), (744, 386), (386, 1)]
    for (t_start, t_end), (want_start, want_end) in zip(THIRDS.model_time_windows, expected):
        assert abs(t_start - want_start) <= 1 and abs(t_end - want_end) <= 1
    windows = THIRDS.model_time_windows  # contiguous, tiling [1000, 0]
    assert windows[0][0] == 1000 and windows[-1][1] == 0
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))


def test_window_lengths_follow_sigma_lengths():
    lengths = [c - e for c, e in zip(THIRDS.start_sigmas, THIRDS.end_sigmas)]
    spans = [a - b for a, b in THIRDS.model_time_windows]
    assert [s / sum(spans) for s in spans] == pytest.approx([x / sum(lengths) for x in lengths])


def test_corrected_start_formula_without_grid():
    sched = PyramidSchedule((0.0, 0.5, 1.0), gamma=0.25, sigma_grid=0)
    s = 0.5  # 1 - original start
    s_prime = s / (math.sqrt(1 + 1 / 0.25) * (1 - s) + s)
    assert sched.start_sigmas[1] == pytest.approx(1 - s_prime, abs=1e-12)


def test_model_time_maps_local_sigma_into_the_window():
    sigma = torch.tensor([1.0, 0.5, 0.0])
    t = THIRDS.model_time(1, sigma)
    t_start, t_end = THIRDS.model_time_windows[1]
    assert t.tolist() == pytest.approx([t_start, (t_start + t_end) / 2, t_end])


def test_uniform_schedule_is_plain_rectified_flow():
    uni = PyramidSchedule.uniform()
    assert uni.num_stages == 1
    assert uni.start_sigmas == (1.0,) and uni.end_sigmas == (0.0,)
    assert uni.model_time_windows == ((1000.0, 0.0),)
    assert uni.model_time(0, 0.37) == pytest.approx(370.0)  # T = 1000 sigma


def test_schedule_from_config_matches():
    cfg = load(EXPERIMENTS / "tiny.yaml")
    assert PyramidSchedule.from_config(cfg.flow).start_sigmas == pytest.approx(THIRDS.start_sigmas)
