"""Shared fixtures: offline Hugging Face, deterministic torch, a small real config."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental download fails at once
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from .helpers import EXPERIMENTS, LEARNED_TEXT  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    yield


@pytest.fixture
def tiny_cfg():
    from nami.config import load

    return load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT)


@pytest.fixture(scope="session")
def tiny_ablation(tmp_path_factory):
    """A two-arm, two-seed `nami ablate`, killed after its first arm x seed and resumed
    (tests/ablation_fixtures.py); test_ablate.py and notebook 03 share it in one xdist group."""
    from .ablation_fixtures import run_killed_then_resumed

    return run_killed_then_resumed(tmp_path_factory.mktemp("ablate"))
