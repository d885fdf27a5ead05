"""trainer.trainable and finetune.lora.targets / stages select what the issue says they do (nami.models.selection)."""

from __future__ import annotations

import pytest

from nami.config import ConfigError, load
from nami.models import build_model
from nami.models.selection import lora_target_modules, stage_blocks, trainable_names

from .helpers import EXPERIMENTS, LEARNED_TEXT


def test_stage_blocks_are_what_each_stage_adds():
    # NAMI-2B: 8 double + 14 single blocks nested 9 / 16 / 22
    assert stage_blocks([9, 16, 22], 8, 0) == [f"double_blocks.{i}" for i in range(8)] + ["single_blocks.0"]
    assert stage_blocks([9, 16, 22], 8, 1) == [f"single_blocks.{i}" for i in range(1, 8)]
    assert stage_blocks([9, 16, 22], 8, 2) == [f"single_blocks.{i}" for i in range(8, 14)]


def test_trainable_patterns_and_stages_select_by_name():
    cfg = load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT)
    m = cfg.model
    names = [f"model.{n}" for n, _ in build_model(cfg).named_parameters()] + ["bridge.weight"]
    assert trainable_names(names, None, m.stage_depths, m.double_blocks) == {n for n in names if n.startswith("model.")}
    last = stage_blocks(m.stage_depths, m.double_blocks, cfg.num_stages - 1)
    chosen = trainable_names(names, [f"stage:{cfg.num_stages - 1}"], m.stage_depths, m.double_blocks)
    assert chosen and all(any(n.startswith(f"model.{b}.") for b in last) for n in chosen)
    assert trainable_names(names, ["bridge.*"], m.stage_depths, m.double_blocks) == {"bridge.weight"}
    with pytest.raises(ConfigError, match="trainer.trainable.*'model.nothing\\*' selects no parameter"):
        trainable_names(names, ["model.nothing*"], m.stage_depths, m.double_blocks)


def test_lora_targets_default_to_every_attention_and_mlp_linear():
    cfg = load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT)
    m, lora = cfg.model, cfg.finetune.lora
    linears = [n for n, mod in build_model(cfg).named_modules() if type(mod).__name__ == "Linear"]
    chosen = lora_target_modules(linears, lora.targets, None, m.stage_depths, m.double_blocks)
    per_double = {"img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj", "img_mlp.fc1", "img_mlp.fc2",
                  "txt_mlp.fc1", "txt_mlp.fc2"}  # fmt: skip
    want = {f"double_blocks.{i}.{s}" for i in range(m.double_blocks) for s in per_double}
    want |= {f"single_blocks.{j}.{s}" for j in range(m.single_blocks) for s in ("linear1", "linear2")}
    assert set(chosen) == want  # not the modulation, embedding or output layers
    only_last = lora_target_modules(linears, lora.targets, [cfg.num_stages - 1], m.stage_depths, m.double_blocks)
    last = stage_blocks(m.stage_depths, m.double_blocks, cfg.num_stages - 1)
    assert only_last and set(only_last) == {n for n in want if any(n.startswith(b + ".") for b in last)}
    with pytest.raises(ConfigError, match="finetune.lora.targets"):
        lora_target_modules(linears, ["*.nothing"], None, m.stage_depths, m.double_blocks)
