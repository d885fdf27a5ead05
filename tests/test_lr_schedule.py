"""`optim.schedule`: linear warmup, then constant or a cosine that reaches 0 at trainer.max_steps."""

from __future__ import annotations

import math

import pytest

from nami.config import ConfigError, load
from nami.lit.joint_flow import lr_factor

from .helpers import EXPERIMENTS


def test_warmup_then_constant():
    assert [lr_factor(s, 4, 100) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_cosine_decays_to_zero_at_max_steps_and_never_rises():
    cosine = [lr_factor(s, 4, 104, "cosine") for s in range(110)]
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0] and cosine[4] == 1.0
    assert cosine[54] == pytest.approx(0.5) and cosine[104] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cosine[4:], cosine[5:]))
    assert cosine[-1] == 0.0 and not math.isnan(lr_factor(0, 0, 0, "cosine"))


def test_unknown_schedule_names_the_key():
    with pytest.raises(ConfigError, match="optim.schedule"):
        load(EXPERIMENTS / "tiny.yaml", ["optim.schedule=linear"])
