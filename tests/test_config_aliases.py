"""Keys that moved into a kind's parameter block keep working under their old names (bridge.hidden,
flow.logit_mean, flow.logit_std): written by a person they print a one-line note, stored in a checkpoint, model
directory or run directory they read silently, and the run directory of an older kit is still the same run."""

from __future__ import annotations

import pytest
import yaml

from nami.config import ConfigError, config_from_dict, load, to_dict
from nami.parts import build_parts

from .helpers import LEARNED_TEXT
from .safety_fixtures import TINY, cli

SGD_MLP = ["bridge.kind=mlp", "bridge.solver=sgd"]


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("nami: note:")]


def _old_form(data: dict, hidden: int = 64, mean: float = 0.0, std: float = 1.0) -> dict:
    """A plain config as the kit wrote it before the keys moved."""
    data["bridge"].pop("params")
    data["flow"].pop("density_params")
    data["bridge"]["hidden"], data["flow"]["logit_mean"], data["flow"]["logit_std"] = hidden, mean, std
    return data


def test_old_override_keys_reach_the_new_place_with_one_note_each(capsys):
    cfg = load(TINY, [*LEARNED_TEXT, *SGD_MLP, "bridge.hidden=32", "flow.logit_mean=0.5", "flow.logit_std=2"])
    assert cfg.bridge.params == {"hidden": 32}
    assert cfg.flow.density_params == {"mean": 0.5, "std": 2.0}
    notes = _notes(capsys.readouterr().err)
    assert len(notes) == 3, notes
    for old, new in [("bridge.hidden", "bridge.params.hidden"), ("flow.logit_mean", "flow.density_params.mean"),
                     ("flow.logit_std", "flow.density_params.std")]:  # fmt: skip
        assert any(old in note and new in note for note in notes), notes
    parts = build_parts(cfg, fitted=False, networks=False)
    assert parts.bridge.branches[0][0].out_channels == 32
    assert (parts.flow.density.params.mean, parts.flow.density.params.std) == (0.5, 2.0)


def test_old_keys_in_a_yaml_file_name_the_file(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text(f"base: {TINY}\nbridge:\n  kind: cnn\n  solver: sgd\n  hidden: 16\nflow:\n  logit_std: 0.5\n")
    cfg = load(old, LEARNED_TEXT)
    assert cfg.bridge.params == {"hidden": 16} and cfg.flow.density_params == {"mean": 0.0, "std": 0.5}
    notes = _notes(capsys.readouterr().err)
    assert len(notes) == 2 and all("old.yaml" in note for note in notes), notes
    code, _, err = cli(capsys, "info", old, *LEARNED_TEXT)  # the command runs, with the notes on stderr
    assert code == 0 and len(_notes(err)) == 2, err


def test_an_old_key_the_kind_never_read_is_dropped(capsys):
    """bridge.hidden did nothing for conv1x1, nor flow.logit_mean for the uniform density: still nothing."""
    cfg = load(TINY, [*LEARNED_TEXT, "bridge.hidden=32", "flow.timestep_density=uniform", "flow.logit_mean=0.5"])
    assert cfg.bridge.params == {} and cfg.flow.density_params == {}
    assert len(_notes(capsys.readouterr().err)) == 2


def test_an_old_and_a_new_key_together_are_one_error_naming_the_old_one():
    with pytest.raises(ConfigError) as err:
        load(TINY, [*LEARNED_TEXT, *SGD_MLP, "bridge.hidden=32", "bridge.params.hidden=16"])
    assert err.value.key == "bridge.hidden" and "bridge.params.hidden" in err.value.message


def test_bad_values_under_an_old_key_name_the_new_key():
    with pytest.raises(ConfigError) as err:
        load(TINY, [*LEARNED_TEXT, "flow.logit_std=0"])
    assert err.value.key == "flow.density_params.std"


def test_a_stored_old_config_reads_silently(capsys):
    """A checkpoint's hyperparameters or a model directory's config.json written before the keys moved."""
    data = _old_form(to_dict(load(TINY, [*LEARNED_TEXT, *SGD_MLP])), hidden=48, mean=0.25)
    capsys.readouterr()
    cfg = config_from_dict(data)
    assert cfg.bridge.params == {"hidden": 48} and cfg.flow.density_params == {"mean": 0.25, "std": 1.0}
    assert "hidden" in data["bridge"]  # the caller's dict is left as it was
    assert load(None, under=data) == cfg
    assert capsys.readouterr().err == ""


def test_a_run_directory_recorded_before_the_keys_moved_is_the_same_run(tmp_path):
    from nami.artifacts import RunDir

    cfg = load(TINY, [*LEARNED_TEXT, f"trainer.default_root_dir={tmp_path}"])
    run = tmp_path / cfg.name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(_old_form(to_dict(cfg))))
    assert RunDir.claim(cfg).path == run
    changed = load(TINY, [*LEARNED_TEXT, f"trainer.default_root_dir={tmp_path}", "flow.density_params.std=2"])
    with pytest.raises(ConfigError, match="flow.density_params.std"):
        RunDir.claim(changed)  # a real difference is still one
