"""optim.name: adamw (torch), adamw8bit (bitsandbytes), adafactor (torch). Each fine-tunes the tiny model from a
trained base and lowers its loss, saves its state in the checkpoints, and a run resumed from one ends on the
uninterrupted run's weights; optimizers that cannot step FSDP2 shards are refused in one line."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from nami.artifacts.weights import load_parts_weights, read_weights
from nami.config import ConfigError
from nami.flow import data_pyramid
from nami.lit import JointFlowModule
from nami.lit.joint_flow import check_optimizer
from nami.lit.runner import train
from nami.parts import build_parts

from .finetune_fixtures import finetune_tiny

# the optimizer state each one keeps per tensor (bitsandbytes nests its quantised moments)
STATE = {"adamw": {"exp_avg", "exp_avg_sq"}, "adafactor": {"row_var", "col_var"},
         "adamw8bit": {"__bnb_optimizer_quant_state__"}}  # fmt: skip


@pytest.fixture(scope="module")
def shapes(small_shapes):
    return small_shapes  # conftest.py's


tiny = finetune_tiny


@pytest.fixture(scope="module")
def base(tmp_path_factory, shapes):
    """3 AdamW steps from scratch: a base whose tensors are not zero (Adafactor's steps are relative to a tensor's
    size, so it barely moves the zero-initialised head and modulations of a fresh model)."""
    root = tmp_path_factory.mktemp("base")
    return train(tiny(root, shapes, "name=base", "trainer.max_steps=3", "trainer.checkpoint_every=3"))


def _fixed_loss(cfg, weights) -> float:
    """The flow loss of `weights` on one fixed batch with fixed noise (step 0, micro-batch 0)."""
    from data_modules.collate import StageBatch

    module = JointFlowModule(cfg, build_parts(cfg, fitted=False))
    load_parts_weights(weights, dict(module.trainable().items()))
    g = torch.Generator().manual_seed(7)
    k = cfg.num_stages
    images = [data_pyramid(torch.rand(8, 3, 32, 32, generator=g) * 2 - 1, k)[s].contiguous() for s in range(k)]
    captions = [["a red circle", "two blue squares"] * 4] * k
    batch = StageBatch(images, captions, [["x"] * 8] * k, [[{}] * 8] * k, [[0] * 8] * k, list(range(k)), 0, [1.0] * k,
                       True)  # fmt: skip
    with torch.no_grad():
        return module.stage_losses(batch).total.item()


@pytest.mark.parametrize("name", ["adamw", "adafactor", "adamw8bit"])
def test_each_optimizer_lowers_the_loss_and_resumes_from_its_saved_state(tmp_path, shapes, base, name):
    if name == "adamw8bit":
        pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (requirements.txt pins it)")
    # lr: Adafactor's is a relative step size (torch's default 1e-2)
    common = [f"trainer.init_from={base}", f"optim.name={name}", "trainer.max_steps=4", "trainer.checkpoint_every=2",
              *(["optim.lr=1e-2"] if name == "adafactor" else [])]  # fmt: skip
    straight = train(tiny(tmp_path, shapes, "name=straight", *common))
    state = torch.load(straight / "checkpoints" / "step00000004.ckpt", weights_only=True, map_location="cpu")
    per_tensor = state["optimizer_states"][0]["state"]
    assert len(per_tensor) == len([k for k in state["state_dict"] if k.startswith(("model.", "text_encoder."))])
    assert all(STATE[name] <= set(s) for s in per_tensor.values() if "row_var" in s or name != "adafactor")
    if name == "adamw8bit":  # 8-bit moments for the large tensors
        quantised = [s["__bnb_optimizer_quant_state__"] for s in per_tensor.values()]
        assert any(q.get("state1") is not None and q["state1"].dtype == torch.uint8 for q in quantised)

    cfg = tiny(tmp_path, shapes, *common)
    before, after = _fixed_loss(cfg, read_weights(base)), _fixed_loss(cfg, read_weights(straight))
    assert after < before - 1e-4, (before, after)

    first = tiny(tmp_path, shapes, "name=resumed", *common)
    first.trainer.max_steps = 2
    train(first)
    resumed = train(tiny(tmp_path, shapes, "name=resumed", *common, "trainer.resume=last"))
    want, got = load_file(straight / "weights.safetensors"), load_file(resumed / "weights.safetensors")
    assert all(torch.equal(want[k], got[k]) for k in want), name


@pytest.mark.parametrize("name", ["adafactor", "adamw8bit"])
def test_optimizers_that_cannot_step_fsdp_shards_are_refused(tiny_cfg, name):
    tiny_cfg.optim.name, tiny_cfg.trainer.strategy = name, "fsdp"
    with pytest.raises(ConfigError) as err:
        check_optimizer(tiny_cfg)
    assert err.value.key == "optim.name" and "FSDP2" in err.value.message and "\n" not in err.value.message


def test_adamw8bit_without_bitsandbytes_names_the_pin(tiny_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    tiny_cfg.optim.name = "adamw8bit"
    with pytest.raises(ConfigError) as err:
        check_optimizer(tiny_cfg)
    assert err.value.key == "optim.name" and "bitsandbytes==0.50.2" in err.value.message
