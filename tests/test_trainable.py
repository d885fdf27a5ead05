"""trainer.trainable: what trains, what stays frozen (bit for bit), what the EMA holds, what checkpoints keep and
how complete weights are read back from them (finetune.base_dtype too)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from nami.artifacts.weights import BASE_FROM_INIT, read_weights
from nami.config import ConfigError
from nami.lit import JointFlowModule
from nami.lit.runner import pretrain_bridges, train
from nami.models.selection import trainable_names
from nami.parts import build_parts

from .finetune_fixtures import finetune_tiny

STAGE2_AND_HEAD = "trainer.trainable=[stage:2,model.final.*]"  # the zero-initialised head passes gradients on


@pytest.fixture(scope="module")
def shapes(small_shapes):
    return small_shapes  # conftest.py's


def tiny(root, shapes, *overrides):
    return finetune_tiny(root, shapes, "trainer.max_steps=3", *overrides)


class StartWeights(JointFlowModule):
    """Keeps every tensor as training starts (after trainer.init_from)."""

    at_start: dict = {}

    def on_train_start(self) -> None:
        StartWeights.at_start = {k: v.detach().clone() for k, v in self.state_dict().items()}


def _checkpoint(run, step: int) -> dict:
    return torch.load(run / "checkpoints" / f"step{step:08d}.ckpt", weights_only=True, map_location="cpu")


def test_patterns_select_what_trains_and_the_ema_holds_only_that(tiny_cfg):
    tiny_cfg.trainer.trainable = ["stage:2", "model.final.*"]
    tiny_cfg.finetune.base_dtype = "bfloat16"
    module = JointFlowModule(tiny_cfg, build_parts(tiny_cfg, fitted=False))
    names = [f"model.{n}" for n, _ in module.model.named_parameters()]
    chosen = trainable_names(names, ["stage:2", "model.final.*"], tiny_cfg.model.stage_depths,
                             tiny_cfg.model.double_blocks)  # fmt: skip
    assert chosen == {n for n in names if n.startswith(("model.single_blocks.1.", "model.final."))}
    trained = dict(module.trained_parameters())
    assert set(trained) == chosen  # the learned text encoder and the bridge are frozen too
    for name, p in [*((f"model.{n}", p) for n, p in module.model.named_parameters()),
                    *((f"text_encoder.{n}", p) for n, p in module.text_encoder.named_parameters())]:  # fmt: skip
        assert p.requires_grad == (name in chosen), name
        assert p.dtype == (torch.float32 if name in chosen else torch.bfloat16), name
    ema = module.ema.state_dict()
    assert set(ema) == chosen and all(torch.equal(ema[n], trained[n]) for n in chosen)
    assert sum(t.numel() for t in ema.values()) == sum(p.numel() for p in trained.values())
    optimizer = module.configure_optimizers()["optimizer"]
    assert [p for group in optimizer.param_groups for p in group["params"]] == list(trained.values())


def test_sampling_with_a_partial_ema_swaps_its_values_in_and_back(tiny_cfg):
    tiny_cfg.trainer.trainable = ["stage:2", "model.final.*"]
    module = JointFlowModule(tiny_cfg, build_parts(tiny_cfg, fitted=False))
    with torch.no_grad():
        for p in module.ema.parameters():
            p.add_(1.0)
    live = {k: v.clone() for k, v in module.model.state_dict().items()}
    pipeline = module.pipeline(use_ema=True)
    assert pipeline.model is module.model  # the live module, which holds the EMA's values while sampling
    with module.ema_applied():
        inside = module.model.state_dict()
        for name, p in module.ema["model"].named_parameters():
            assert torch.equal(inside[name], p), name
        assert all(torch.equal(inside[k], live[k]) for k in live if not k.startswith(("single_blocks.1.", "final.")))
    assert all(torch.equal(v, live[k]) for k, v in module.model.state_dict().items())  # back, bit for bit


def test_by_default_everything_trains_and_the_ema_is_a_whole_copy(tiny_cfg):
    """Today's layout: ema.model.<name> and ema.text_encoder.<name> for every entry of the networks' state."""
    module = JointFlowModule(tiny_cfg, build_parts(tiny_cfg, fitted=False))
    networks = module.trainable().state_dict()
    assert list(module.ema.state_dict()) == list(networks)
    assert isinstance(module.ema["model"], type(module.model))
    assert [n for n, _ in module.trained_parameters()] == [f"{part}.{n}" for part in ("model", "text_encoder")
                                                          for n, _ in getattr(module, part).named_parameters()]
    assert not module.flow.bridge_trains and not any(p.requires_grad for p in module.bridge.parameters())
    assert module.pipeline(use_ema=True).model is module.ema["model"]


def test_frozen_tensors_stay_bit_identical_while_the_selected_ones_train(tmp_path, shapes):
    """From scratch (no init_from): the frozen tensors are kept in the checkpoints, unchanged; the EMA holds the
    trained ones only; weights.safetensors is complete (EMA where trained, the frozen base elsewhere)."""
    run = train(tiny(tmp_path, shapes, STAGE2_AND_HEAD, "trainer.checkpoint_every=3"), module_cls=StartWeights)
    start, state = StartWeights.at_start, _checkpoint(run, 3)
    assert BASE_FROM_INIT not in state
    trained = {k for k in state["state_dict"] if k.startswith(("model.single_blocks.1.", "model.final."))}
    frozen = {k for k in start if k.startswith(("model.", "text_encoder.")) and k not in trained}
    assert frozen and all(torch.equal(state["state_dict"][k], start[k]) for k in frozen)
    assert all(not torch.equal(state["state_dict"][k], start[k]) for k in trained if k.endswith("linear.weight"))
    ema = {k[len("ema.") :]: v for k, v in state["state_dict"].items() if k.startswith("ema.")}
    assert set(ema) == trained
    assert len(state["optimizer_states"][0]["state"]) == len(trained)
    weights = load_file(run / "weights.safetensors")
    assert set(weights) == {k for k in start if k.startswith(("model.", "text_encoder."))}
    assert all(torch.equal(weights[k], start[k]) for k in frozen)
    assert all(torch.equal(weights[k], ema[k]) for k in trained)
    assert read_weights(run / "checkpoints" / "step00000003.ckpt").tensors.keys() == weights.keys()


def test_only_the_bridge_trains(tmp_path, shapes):
    """trainer.trainable=[bridge.*]: the flow loss reaches the bridge (no no_grad around it then), the networks stay
    bit-identical, the exported model directory holds the bridge's EMA."""
    cfg = tiny(tmp_path, shapes, "bridge.kind=conv1x1", "bridge.fit_batches=3", "bridge.heldout_batches=1",
               "trainer.trainable=[bridge.*]", "trainer.checkpoint_every=3")  # fmt: skip
    pretrain_bridges(cfg)
    fitted = load_file(tmp_path / "tiny" / "bridges.safetensors")
    run = train(cfg, module_cls=StartWeights)
    start, state = StartWeights.at_start, _checkpoint(run, 3)
    networks = {k for k in start if k.startswith(("model.", "text_encoder."))}
    assert all(torch.equal(state["state_dict"][k], start[k]) for k in networks)
    assert {k for k in state["state_dict"] if k.startswith("ema.")} == {"ema.bridge.weight", "ema.bridge.bias"}
    assert not torch.equal(state["state_dict"]["bridge.weight"], start["bridge.weight"])  # it learned
    weights = load_file(run / "weights.safetensors")
    assert weights.keys() == networks and all(torch.equal(weights[k], start[k]) for k in networks)
    exported = load_file(sorted((run / "export").iterdir())[-1] / "bridges.safetensors")
    ema_bridge = state["state_dict"]["ema.bridge.weight"]
    assert any(torch.equal(t, ema_bridge) for t in exported.values())
    assert not any(torch.equal(t, ema_bridge) for t in fitted.values())


@pytest.fixture(scope="module")
def base_export(tmp_path_factory, shapes):
    """A fully trained tiny model directory (3 AdamW steps): the base of the fine-tunes below."""
    root = tmp_path_factory.mktemp("base")
    run = train(tiny(root, shapes, "name=base", "trainer.checkpoint_every=3"))
    return sorted((run / "export").iterdir())[-1]


def test_a_partial_fine_tune_checkpoints_what_cannot_be_rebuilt_and_resumes_exactly(tmp_path, shapes, base_export):
    common = [f"trainer.init_from={base_export}", STAGE2_AND_HEAD, "trainer.checkpoint_every=2", "trainer.max_steps=4"]
    straight = train(tiny(tmp_path, shapes, "name=straight", *common))
    state = _checkpoint(straight, 4)
    base = load_file(base_export / "model.safetensors")
    trained = {k for k in base if k.startswith(("model.single_blocks.1.", "model.final."))}
    stored = set(state["state_dict"])
    assert stored == trained | {f"ema.{k}" for k in trained}  # no base tensor, no EMA of one
    assert set(state[BASE_FROM_INIT]) == set(base) - trained

    # complete weights back: the base where frozen, the EMA where trained, from the checkpoint and at the end
    weights = read_weights(straight / "checkpoints" / "step00000004.ckpt").tensors
    assert weights.keys() == base.keys()
    assert all(torch.equal(weights[k], base[k]) for k in base if k not in trained)
    assert all(torch.equal(weights[k], state["state_dict"][f"ema.{k}"]) for k in trained)
    final = load_file(straight / "weights.safetensors")
    assert final.keys() == base.keys() and all(torch.equal(final[k], weights[k]) for k in base)
    exported = load_file(sorted((straight / "export").iterdir())[-1] / "model.safetensors")
    assert all(torch.equal(exported[k], final[k]) for k in base)
    rebuilt = JointFlowModule.load_from_checkpoint(straight / "checkpoints" / "step00000004.ckpt")
    assert all(torch.equal(t, weights[f"model.{k}"]) for k, t in rebuilt.model.state_dict().items()
               if f"model.{k}" not in trained)  # Lightning's builder: the base from init_from too  # fmt: skip

    # the base reloaded from init_from, the rest from the checkpoint: the same weights as the uninterrupted run
    first = tiny(tmp_path, shapes, "name=resumed", *common)
    first.trainer.max_steps = 2
    train(first)
    resumed = train(tiny(tmp_path, shapes, "name=resumed", *common, "trainer.resume=last"))
    again = load_file(resumed / "weights.safetensors")
    assert all(torch.equal(again[k], final[k]) for k in final)

    # a checkpoint away from its run directory cannot name its base: one line saying so
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(straight / "checkpoints" / "step00000004.ckpt", lone / "step00000004.ckpt")
    with pytest.raises(ConfigError) as err:
        read_weights(lone / "step00000004.ckpt")
    assert err.value.key == "--ckpt" and "trainer.init_from" in err.value.message


def test_bfloat16_base_weights_train_under_autocast_and_stay_unchanged(tmp_path, shapes):
    cfg = tiny(tmp_path, shapes, STAGE2_AND_HEAD, "finetune.base_dtype=bfloat16", "trainer.precision=bf16-mixed",
               "trainer.checkpoint_every=3")  # fmt: skip
    run = train(cfg, module_cls=StartWeights)
    start, state = StartWeights.at_start, _checkpoint(run, 3)["state_dict"]
    dtypes = {t.dtype for k, t in state.items() if k.startswith("model.") and "single_blocks.1." not in k
              and "final." not in k}  # fmt: skip
    assert dtypes == {torch.bfloat16}
    assert {t.dtype for k, t in state.items() if k.startswith("ema.")} == {torch.float32}
    assert all(torch.equal(state[k], start[k]) for k in start if k.startswith("model.double_blocks."))
    with pytest.raises(ConfigError) as err:
        train(tiny(tmp_path, shapes, "name=fp32", STAGE2_AND_HEAD, "finetune.base_dtype=bfloat16"))
    assert err.value.key == "finetune.base_dtype" and "bf16-mixed" in err.value.message
