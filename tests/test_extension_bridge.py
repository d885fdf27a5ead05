"""Adding a bridge kind with a parameter of its own is one class: this file alone defines and registers it, and
`nami info` / `nami train` take it from the command line with its parameter, which reaches the bridge the
flow trains with. Bad parameters are one line naming the key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import yaml

from nami.bridges import BridgeFlow, build_bridge
from nami.config import ConfigError, load
from nami.flow import PyramidSchedule, previous_end, up
from nami.parts import build_parts
from nami.registry import BRIDGES

from .helpers import LEARNED_TEXT
from .safety_fixtures import TINY, cli, one_error_line, run_args

KIND = "toy_gain"


@dataclass(frozen=True)
class GainParams:
    gain: float = 1.0

    def validate(self) -> None:
        if not self.gain > 0:
            raise ConfigError("gain", f"must be > 0, got {self.gain}")


class GainBridge(BridgeFlow):
    """start_k = gain x Up(end_(k-1)): no weights to fit, one parameter; records every gain it applies."""

    Params = GainParams
    learnable = False
    applied: list[float] = []

    def transition(self, u, k, generator):
        GainBridge.applied.append(self.params.gain)
        return self.params.gain * u


@pytest.fixture
def toy_kind():
    """GainBridge registered as `toy_gain` for one test (the registry is the process's, so it leaves after)."""
    BRIDGES.register(KIND)(GainBridge)
    GainBridge.applied.clear()
    yield KIND
    BRIDGES.remove(KIND)


def test_the_parameter_is_parsed_into_the_bridge_the_flow_holds(toy_kind):
    u = torch.randn(2, 3, 8, 8)
    assert torch.equal(build_bridge(toy_kind, PyramidSchedule(), 3, [4, 8, 16], {"gain": 2})(u, 1), 2 * u)
    cfg = load(TINY, [*LEARNED_TEXT, f"bridge.kind={toy_kind}", "bridge.params.gain=2", "bridge.detail_noise=false"])
    assert cfg.bridge.params == {"gain": 2.0}  # resolved as the kind parsed it
    parts = build_parts(cfg, fitted=False, networks=False)
    assert parts.flow.bridge is parts.bridge and parts.bridge.params.gain == 2.0
    assert parts.bridge.schedule is parts.flow.schedule  # one schedule per build_parts
    x = torch.rand(2, 3, 16, 16)
    n = torch.randn_like(x)
    sample = parts.flow.training_sample(x, 1, noise=n, sigma_local=torch.ones(2))
    assert torch.allclose(sample.start, 2 * up(previous_end(x, n, 1, parts.flow.schedule)))
    assert load(TINY, [*LEARNED_TEXT, f"bridge.kind={toy_kind}"]).bridge.params == {"gain": 1.0}  # the default


def test_nami_info_accepts_the_kind_and_its_parameter(toy_kind, capsys):
    code, out, err = cli(capsys, "info", TINY, *LEARNED_TEXT, f"bridge.kind={toy_kind}", "bridge.params.gain=2")
    assert code == 0, err


@pytest.mark.parametrize("override, words", [
    ("bridge.params.gain=0", ["bridge.params.gain", "must be > 0"]),
    ("bridge.params.gain=abc", ["bridge.params.gain", "must be a number"]),
    ("bridge.params.gains=2", ["bridge.params.gains", f"unknown parameter of bridge.kind={KIND}", "it takes gain"]),
])  # fmt: skip
def test_a_bad_parameter_is_one_line_naming_the_key(toy_kind, override, words, capsys):
    code, out, err = cli(capsys, "info", TINY, *LEARNED_TEXT, f"bridge.kind={toy_kind}", override)
    line = one_error_line(err)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert all(word in line for word in words), line


def test_nami_train_trains_through_the_kind_with_its_parameter(toy_kind, tmp_path, capsys):
    from data_modules.synth import write_shapes

    write_shapes(tmp_path / "shapes", num=24, shards=2, resolution=32)
    args = run_args(tmp_path, tmp_path / "shapes", f"bridge.kind={toy_kind}", "bridge.params.gain=2", "name=toy")
    code, _, err = cli(capsys, "train", TINY, *args)
    assert code == 0, err
    assert GainBridge.applied and set(GainBridge.applied) == {2.0}  # every transition the flow ran
    recorded = yaml.safe_load((tmp_path / "toy" / "config.yaml").read_text())
    assert recorded["bridge"]["kind"] == toy_kind and recorded["bridge"]["params"] == {"gain": 2.0}
