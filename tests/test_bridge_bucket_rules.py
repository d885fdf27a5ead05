"""scripts/bridge_bucket_rules.py: the held-out MSE of scalar_bias's rules for other sizes on mixed-aspect data,
the measurement behind the README's choice (resize one map fitted on every bucket)."""

from __future__ import annotations

import importlib.util

import pytest

from .helpers import REPO


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bridge_bucket_rules", REPO / "scripts" / "bridge_bucket_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compare(resolution=64, fit=64, heldout=32, seed=2), module


def test_every_rule_is_scored_on_every_bucket(report):
    result, module = report
    assert result["buckets"] == ["128x32", "80x48", "64x64", "48x80", "32x128"]
    assert list(result["mse"]) == list(module.RULES)
    text = module.format_report(result)
    assert all(rule in text for rule in module.RULES)
    for rule, mse in result["mse"].items():
        assert set(mse["per_bucket"]) == set(result["buckets"])
        if rule != "identity":  # every fitted rule beats Up alone, on every transition
            assert all(mse["all"][t] < result["mse"]["identity"]["all"][t] for t in mse["all"]), rule


def test_fitting_on_every_bucket_beats_resizing_a_square_fit_on_the_far_buckets(report):
    """The released situation (a map fitted on squares, resized) loses most at 1:4 and 4:1; fitting the one map on
    every bucket in normalised coordinates recovers it."""
    mse = report[0]["mse"]
    for bucket in ("128x32", "32x128"):
        square = mse["square fit, resized"]["per_bucket"][bucket]["transition_2"]
        mixed = mse["mixed fit, resized"]["per_bucket"][bucket]["transition_2"]
        assert mixed < 0.98 * square, (bucket, mixed, square)
    assert mse["mixed fit, resized"]["all"]["transition_2"] < mse["square fit, resized"]["all"]["transition_2"]
