"""FID and CLIPScore wrappers: local weights only, offline, with tiny random models saved to tmp_path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nami.config import load
from nami.eval import clip_score, fid_score, prompt_set
from nami.eval.shapes import render

from .prompt_fixtures import random_inception_state, save_tiny_clip


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: thread start-up would dominate, and a busy CPU makes it seconds (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes():
    specs = prompt_set(4, seed=5)
    return [render(s) for s in specs], [s["caption"] for s in specs]


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """Random FID Inception weights (tests/prompt_fixtures.py) in a file: the network and its inputs are the real
    path, only the weights are not the released ones."""
    path = tmp_path_factory.mktemp("fid") / "inception.pth"
    torch.save(random_inception_state(), path)
    return path


def test_eval_config_keys():
    cfg = load(overrides=["eval.per_category=3", "eval.fid_weights=/w/inception.pth", "eval.clip_path=/w"])
    assert (cfg.eval.per_category, cfg.eval.seed, cfg.eval.batch_size) == (3, 1000, 32)
    assert (cfg.eval.fid_weights, cfg.eval.clip_path) == ("/w/inception.pth", "/w")
    assert load().eval.fid_weights is None and load().eval.clip_path is None


def test_missing_weights_give_none_and_a_one_line_notice(shapes, tmp_path):
    images, captions = shapes
    assert fid_score(images, images, None) == (None, "FID skipped: eval.fid_weights is not set")
    assert clip_score(images, captions, None) == (None, "CLIPScore skipped: eval.clip_path is not set")
    value, notice = fid_score(images, images, tmp_path / "absent.pth")
    assert value is None and "absent.pth does not exist" in notice and "\n" not in notice
    value, notice = clip_score(images, captions, str(tmp_path / "no-clip"))
    assert value is None and "no-clip does not exist" in notice


def test_fid_is_zero_against_itself_and_positive_against_a_shifted_set(shapes, inception):
    images, _ = shapes
    real = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images[:6]])
    signed = real.float() / 127.5 - 1  # model-space tensors go through the same converter
    same, notice = fid_score(real, signed, inception, batch_size=4)
    assert notice is None and abs(same) < 1e-3
    shifted, _ = fid_score(real, (signed * 0.6 - 0.3).clamp(-1, 1), inception)
    assert shifted > 1.0 and shifted > 1000 * abs(same)


@pytest.mark.filterwarnings("ignore:`max_length` is ignored")  # the tokenizer, on torchmetrics' padding
def test_clip_score_with_a_local_tiny_clip(shapes, tmp_path):
    save_tiny_clip(tmp_path)
    images, captions = shapes
    score, notice = clip_score(images, captions, tmp_path, batch_size=7)
    assert notice is None and math.isfinite(score) and 0.0 <= score <= 100.0
    again, _ = clip_score(images, captions, str(tmp_path), batch_size=24)
    assert again == pytest.approx(score, abs=1e-4)  # batching does not change the mean
    with pytest.raises(ValueError, match="prompts"):
        clip_score(images, captions[:-1], tmp_path)
