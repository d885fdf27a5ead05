"""Config composition and validation: every failure is one line naming the key, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nami.cli import main
from nami.config import ConfigError, NamiConfig, load

from .helpers import EXPERIMENTS, LEARNED_TEXT

TINY = str(EXPERIMENTS / "tiny.yaml")


@pytest.mark.parametrize("name", ["tiny", "nami_0.6b", "nami_2b"])
def test_presets_load_and_validate(name):
    cfg = load(EXPERIMENTS / f"{name}.yaml")
    assert isinstance(cfg, NamiConfig)
    assert cfg.model.stage_depths[-1] == cfg.model.double_blocks + cfg.model.single_blocks
    assert len(cfg.model.stage_depths) == cfg.num_stages == 3


def test_base_chain_and_overrides_compose(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {TINY}\nname: child\nmodel:\n  width: 96\n  heads: 3\n")
    grandchild = tmp_path / "grandchild.yaml"
    grandchild.write_text("base: child.yaml\nsampler:\n  guidance: 1.5\n")
    cfg = load(grandchild, ["model.heads=2", "seed=7"])
    assert (cfg.name, cfg.model.width, cfg.model.heads, cfg.sampler.guidance, cfg.seed) == ("child", 96, 2, 1.5, 7)
    assert cfg.model.stage_depths == [2, 3, 4]  # inherited from tiny.yaml
    assert load(EXPERIMENTS / "nami_0.6b.yaml").autoencoder.channels == 16  # from nami_2b.yaml


def test_environment_supplies_model_paths(monkeypatch):
    monkeypatch.setenv("NAMI_VAE", "/models/flux-vae")
    assert load(EXPERIMENTS / "nami_2b.yaml").autoencoder.path == "/models/flux-vae"


BAD_OVERRIDES = [
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),  # no micro-batch per step
    (["finetune.lora.rank=-1"], "finetune.lora.rank"),
    (["model.depthh=3"], "model.depthh"),  # unknown key
    (["model.width=abc"], "model.width"),  # wrong type
    (["flow.gamma=[1]"], "flow.gamma"),  # wrong type (list for a float)
    (["model.stage_depths=[2,2,6]"], "model.stage_depths"),  # not strictly increasing
    (["model.stage_depths=[2,4,5]"], "model.stage_depths"),  # does not end at the block count
    (["model.stage_depths=[3,6]"], "model.stage_depths"),  # 2 depths for 3 stages
    (["flow.stage_range=[0,0.5,1]", "flow.stage_ratios=[1,1]", "sampler.steps=[5,5]"], "model.stage_depths"),
    (["resolution=40"], "resolution"),  # not divisible by patch x 2^(K-1) = 16
    (["flow.stage_range=[0,0.6,0.3,1]"], "flow.stage_range"),  # not increasing
    (["flow.stage_range=[0.1,0.5,0.8,1]"], "flow.stage_range"),  # not from 0
    (["flow.stage_range=[0,0.3,0.6,0.9]"], "flow.stage_range"),  # not to 1
    (["flow.stage_ratios=[1,1]"], "flow.stage_ratios"),
    (["bridge.kind=linear"], "bridge.kind"),
    (["bridge.kind=mlp"], "bridge.solver"),  # no closed form for mlp
    (["bridge.params.hidden=32"], "bridge.params.hidden"),  # conv1x1 takes no parameter
    (["bridge.kind=cnn", "bridge.solver=sgd", "bridge.params.hidden=0"], "bridge.params.hidden"),
    (["bridge.kind=mlp", "bridge.solver=sgd", "bridge.params.width=8"], "bridge.params.width"),  # unknown
    (["flow.density_params.std=0"], "flow.density_params.std"),
    (["flow.density_params.std=wide"], "flow.density_params.std"),
    (["flow.timestep_density=uniform", "flow.density_params.mean=0.5"], "flow.density_params.mean"),
    (["sampler.grid_params.shift=1"], "sampler.grid_params.shift"),
    (["sampler.steps=[10,10]"], "sampler.steps"),
    (["flow.gamma=0.5"], "flow.gamma"),
    (["flow.prediction=noise"], "flow.prediction"),
    (["trainer.strategy=deepspeed"], "trainer.strategy"),
    (["model.width"], "model.width"),  # not key=value
    # values that passed validation and crashed later, or asked for unbounded work (issue 23, items 10, 12, 13)
    (["model.heads=0"], "model.heads"),  # ZeroDivisionError inside validation before
    (["model.width=0"], "model.width"),
    (["model.width=-64"], "model.width"),
    (["model.heads=-4"], "model.heads"),
    (["model.width=1000000000"], "model.width"),
    (["model.single_blocks=1000000"], "model.single_blocks"),
    (["text_encoder.max_length=0"], "text_encoder.max_length"),
    (["text_encoder.max_length=1000000000"], "text_encoder.max_length"),
    (["text_encoder.dim=-8"], "text_encoder.dim"),
    (["optim.lr=-0.001"], "optim.lr"),
    (["optim.lr=nan"], "optim.lr"),
    (["seed=-1"], "seed"),
    (["optim.warmup_steps=-5"], "optim.warmup_steps"),
    (["sampler.steps=[1000000000,1,1]"], "sampler.steps[0]"),
    (["eval.per_category=1000000000"], "eval.per_category"),
    (["name=../outside"], "name"),
    (["name=a/b"], "name"),
]


@pytest.mark.parametrize("overrides,key", BAD_OVERRIDES)
def test_bad_config_is_one_line_naming_the_key_exit_2(overrides, key, capsys):
    with pytest.raises(ConfigError) as err:
        load(TINY, overrides)
    assert err.value.key == key
    assert main(["info", TINY, *overrides]) == 2
    out, errors = capsys.readouterr()
    assert out == ""
    lines = errors.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], errors


def test_bad_yaml_files_name_the_file_or_key(tmp_path, capsys):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(f"base: {TINY}\nmodel:\n  n_layers: 3\n")
    assert main(["info", str(unknown)]) == 2
    assert "model.n_layers" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    assert main(["info", str(broken)]) == 2
    assert "broken.yaml" in capsys.readouterr().err
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("base: cyclic.yaml\n")
    assert main(["info", str(cyclic)]) == 2
    assert "base" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    nami = Path(sys.executable).parent / "nami"
    bad = subprocess.run([nami, "info", TINY, "model.stage_depths=[2,4,5]"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "model.stage_depths" in bad.stderr
    good = subprocess.run([nami, "info", TINY, *LEARNED_TEXT], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr


def test_nami_config_prints_the_resolved_config_and_help_points_at_it(capsys):
    import yaml

    from nami.config import to_dict

    assert main(["config", str(TINY), "model.width=96", "trainer.max_steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == to_dict(load(TINY, ["model.width=96", "trainer.max_steps=7"]))  # every key, resolved
    assert printed["model"]["width"] == 96 and "eval" in printed and "stage_depths" in printed["model"]
    assert main(["config", str(TINY), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainer"]["max_steps"] == load(TINY).trainer.max_steps
    assert main(["config", str(TINY), "model.wdth=3"]) == 2 and "model.wdth" in capsys.readouterr().err
    help_text = subprocess.run([Path(sys.executable).parent / "nami", "--help"], capture_output=True, text=True).stdout
    assert "nami config CONFIG" in help_text


@pytest.mark.parametrize("kind", ["billion_laughs", "deep", "not_utf8", "huge"])
def test_hostile_yaml_is_one_line_quickly(kind, tmp_path, capsys):
    """A config file cannot hang, exhaust memory or dump a 3,000-line RecursionError (issue 23, item 11)."""
    import time

    path = tmp_path / f"{kind}.yaml"
    if kind == "billion_laughs":
        lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
        path.write_text("\n".join(lines) + "\n")  # 9^10 strings once expanded
    elif kind == "deep":
        path.write_text("model: " + "[" * 100_000 + "]" * 100_000 + "\n")
    elif kind == "not_utf8":
        path.write_bytes(b"name: caf\xe9\n")
    else:
        path.write_text("name: x\n" + "# padding\n" * 200_000)
    start = time.perf_counter()
    assert main(["info", str(path)]) == 2
    assert time.perf_counter() - start < 20  # one line, at once (minutes or a crash before)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err, err
