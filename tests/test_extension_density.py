"""Adding a timestep density with a parameter of its own is one class: this file alone defines and registers
it, and `nami info` / `nami train` take it from the command line with its parameter, which reaches the
density the flow draws sigma' from. Bad parameters are one line naming the key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from nami.config import ConfigError, load
from nami.flow import TimestepDensity
from nami.parts import build_parts
from nami.registry import TIMESTEP_DENSITIES

from .helpers import LEARNED_TEXT
from .safety_fixtures import TINY, cli, one_error_line, run_args

KIND = "toy_fixed"


@dataclass(frozen=True)
class FixedParams:
    at: float = 0.5  # the one sigma' every sample gets

    def validate(self) -> None:
        if not 0 < self.at < 1:
            raise ConfigError("at", f"must lie in (0, 1), got {self.at}")


class FixedDensity(TimestepDensity):
    """Every training sample at sigma' = at; records every draw."""

    Params = FixedParams
    drawn: list[float] = []

    def __call__(self, batch, generator=None, device=None):
        FixedDensity.drawn.append(self.params.at)
        return torch.full((batch,), self.params.at, device=device)


@pytest.fixture
def toy_kind():
    """FixedDensity registered as `toy_fixed` for one test (the registry is the process's, so it leaves after)."""
    TIMESTEP_DENSITIES.register(KIND)(FixedDensity)
    FixedDensity.drawn.clear()
    yield KIND
    TIMESTEP_DENSITIES.remove(KIND)


def test_the_parameter_is_parsed_into_the_density_the_flow_draws_from(toy_kind):
    cfg = load(TINY, [*LEARNED_TEXT, f"flow.timestep_density={toy_kind}", "flow.density_params.at=0.25"])
    assert cfg.flow.density_params == {"at": 0.25}
    flow = build_parts(cfg, fitted=False, networks=False).flow
    assert isinstance(flow.density, FixedDensity) and flow.density.params.at == 0.25
    sample = flow.training_sample(torch.rand(3, 3, 8, 8), 0, torch.Generator().manual_seed(0))
    assert sample.sigma_local.tolist() == [0.25] * 3
    assert sample.model_time.tolist() == pytest.approx([flow.schedule.model_time(0, 0.25)] * 3)


def test_nami_info_accepts_the_density_and_its_parameter(toy_kind, capsys):
    code, _, err = cli(capsys, "info", TINY, *LEARNED_TEXT, f"flow.timestep_density={toy_kind}",
                       "flow.density_params.at=0.25")  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize("override, words", [
    ("flow.density_params.at=1.5", ["flow.density_params.at", "must lie in (0, 1)"]),
    ("flow.density_params.at=[0.5]", ["flow.density_params.at", "must be a number"]),
    ("flow.density_params.mean=0", ["flow.density_params.mean", f"flow.timestep_density={KIND}", "it takes at"]),
])  # fmt: skip
def test_a_bad_parameter_is_one_line_naming_the_key(toy_kind, override, words, capsys):
    code, out, err = cli(capsys, "info", TINY, *LEARNED_TEXT, f"flow.timestep_density={toy_kind}", override)
    line = one_error_line(err)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert all(word in line for word in words), line


def test_nami_train_draws_from_the_density_with_its_parameter(toy_kind, tmp_path, capsys):
    from data_modules.synth import write_shapes

    write_shapes(tmp_path / "shapes", num=24, shards=2, resolution=32)
    args = run_args(tmp_path, tmp_path / "shapes", f"flow.timestep_density={toy_kind}", "flow.density_params.at=0.25")
    code, _, err = cli(capsys, "train", TINY, *args)
    assert code == 0, err
    assert FixedDensity.drawn and set(FixedDensity.drawn) == {0.25}  # one draw per stage group and step
