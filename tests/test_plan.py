"""`nami plan`: its parameter / gradient / optimizer / EMA bytes are the bytes a real tiny run holds, its
activation model is what autograd keeps, its FSDP shards are fully_shard's, its adapters are PEFT's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nami.cli import main
from nami.config import load
from nami.perf import parameter_counts
from nami.perf import plan as P

from .helpers import EXPERIMENTS, LEARNED_TEXT, REPO

TINY = [*LEARNED_TEXT, "data.batch_size=5", "trainer.precision=32-true", "trainer.accelerator=cpu"]


def tiny(*overrides: str):
    return load(EXPERIMENTS / "tiny.yaml", [*TINY, *overrides])


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (a tensor shared by several entries counts once)."""
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


def one_step(cfg):
    """The real JointFlowModule after one optimizer step through a Lightning Trainer, and its optimizer."""
    import lightning as L

    from nami.lit.joint_flow import JointFlowModule
    from nami.perf.bench import synthetic_batch

    module = JointFlowModule(cfg)
    batch = synthetic_batch(cfg, module.flow.mix)
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda b: b)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, precision="32-true")  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return module, trainer.optimizers[0]




@pytest.mark.parametrize("overrides", [
    pytest.param([], id="adamw"),
    pytest.param(["optim.name=adafactor"], id="adafactor"),
    pytest.param(["optim.name=adamw8bit"], id="adamw8bit"),
    pytest.param(["trainer.trainable=[stage:2]"], id="freezing"),
    pytest.param(["finetune.lora.rank=4"], id="lora"),
])  # fmt: skip
def test_plan_counts_the_bytes_a_tiny_training_step_holds(overrides):
    cfg = tiny(*overrides)
    module, optimizer = one_step(cfg)
    held = {
        "parameters": storage_bytes(p for n, p in module.named_parameters() if not n.startswith("ema.")),
        "gradients": storage_bytes(p.grad for p in module.parameters() if p.grad is not None),
        "optimizer": storage_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)),
        "ema": storage_bytes(module.ema.parameters()),
    }
    planned = P.plan_report(cfg)["bytes"]
    assert held == {key: planned[key] for key in held}


def module_with_gradients(cfg):
    """The real training module with a gradient on every trained parameter (one backward of its own loss)."""
    from nami.lit.joint_flow import JointFlowModule
    from nami.perf.bench import synthetic_batch

    module = JointFlowModule(cfg)
    module.stage_losses(synthetic_batch(cfg, module.flow.mix)).total.backward()
    return module


def test_adafactor_state_is_what_torch_adafactor_holds():
    cfg = tiny("optim.name=adafactor")
    module = module_with_gradients(cfg)
    optimizer = torch.optim.Adafactor(module.trainable().parameters(), lr=1e-3)
    optimizer.step()
    held = storage_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    assert held == P.plan_report(cfg)["bytes"]["optimizer"]
    assert held < P.plan_report(tiny())["bytes"]["optimizer"] / 5  # factored: far below AdamW's two moments


def test_adamw8bit_state_is_what_bitsandbytes_holds():
    import bitsandbytes as bnb  # pinned in requirements.txt; its 8-bit AdamW runs on CPUs too

    cfg = tiny("optim.name=adamw8bit")
    module = module_with_gradients(cfg)
    optimizer = bnb.optim.AdamW8bit(module.trainable().parameters(), lr=1e-3)
    optimizer.step()
    held = storage_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    assert held == P.plan_report(cfg)["bytes"]["optimizer"]


@pytest.mark.parametrize("overrides", [["finetune.lora.rank=4"],
                                       ["finetune.lora.rank=8", "finetune.lora.stages=[2]"]])  # fmt: skip
def test_lora_adapters_are_what_peft_injects(overrides):
    from nami.models import build_model
    from nami.models.lora import AdapterSpec, add_adapter

    cfg = tiny(*overrides)
    model = build_model(cfg)
    add_adapter(model, AdapterSpec.from_config(cfg.finetune.lora, cfg.model, model))
    injected = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    report = P.plan_report(cfg)
    assert report["params"]["lora"] == injected > 0
    assert report["params"]["trained"] == injected
    assert report["bytes"]["gradients"] == report["bytes"]["ema"] == 4 * injected


FSDP_SCRIPT = """
import json, sys, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.testing._internal.distributed.fake_pg import FakeStore
from nami.config import load
from nami.lit.joint_flow import JointFlowModule
dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)  # rank 0 holds the largest shards
module = JointFlowModule(load(sys.argv[1], sys.argv[2:]))
module._device_mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("data_parallel",))
module.configure_model()
local = lambda p: p.to_local() if hasattr(p, "to_local") else p
size = lambda ps: sum(local(p).numel() * local(p).element_size() for p in ps)
print(json.dumps({"parameters": size(p for n, p in module.named_parameters() if not n.startswith("ema.")),
                  "ema": size(module.ema.parameters())}))
"""


def test_fsdp_shards_are_those_fully_shard_makes():
    overrides = [*TINY, "trainer.strategy=fsdp", "trainer.devices=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", FSDP_SCRIPT, str(EXPERIMENTS / "tiny.yaml"), *overrides], env=env,
                         capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
    held = json.loads(out.stdout.strip().splitlines()[-1])
    planned = P.plan_report(load(EXPERIMENTS / "tiny.yaml", overrides))["bytes"]
    assert held == {"parameters": planned["parameters"], "ema": planned["ema"]}
    assert planned["parameters"] < P.plan_report(tiny())["bytes"]["parameters"] / 3


@pytest.mark.parametrize("overrides", [[], ["trainer.trainable=[stage:2]"], ["trainer.trainable=[model.*.txt_mlp.*]"],
                                       ["finetune.lora.rank=4"], ["finetune.lora.rank=4", "finetune.lora.stages=[2]"]])  # fmt: skip
def test_activation_model_is_what_autograd_keeps(overrides):
    """Float32 on the CPU: the tensors autograd saves for one micro-batch's backward (distinct storages, weights
    excluded) against the model, within 5% (the learned text encoder's own activations and the (B, width)
    conditioning vectors are left out of it). The CPU's RMSNorm is the composite one."""
    from nami.lit.joint_flow import JointFlowModule
    from nami.perf.bench import synthetic_batch

    cfg = tiny("data.batch_size=8", *overrides)
    module = JointFlowModule(cfg)  # frozen as configured: trainer.trainable, or the adapters of finetune.lora
    batch = synthetic_batch(cfg, module.flow.mix)
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module.stage_losses(batch)
    p = P.precision_of(cfg)
    table, adapted = P.param_table(cfg, p)
    grads, outer = P.block_grads(cfg, table, adapted)
    counts = [len(keys) for keys in batch.keys]
    planned = P.activation_bytes(cfg, p, grads, outer, counts, checkpointing=False, composite=True)
    assert planned == pytest.approx(sum(kept.values()), rel=0.05)


def test_json_is_one_object_and_the_table_names_each_figure(capsys):
    assert main(["plan", str(EXPERIMENTS / "tiny.yaml"), *LEARNED_TEXT, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"parameters", "gradients", "optimizer", "ema", "activations_checkpointing",
            "activations_no_checkpointing", "encoders", "total"} <= set(report["bytes"])  # fmt: skip
    assert [c["class_gb"] for c in report["cards"]] == [24, 48, 80, 141] and report["cards"][0]["fits"]
    assert report["step"]["mfu"] == P.DEFAULT_MFU and report["step"]["seconds"] > 0
    assert main(["plan", str(EXPERIMENTS / "tiny.yaml"), *LEARNED_TEXT, "--card", "A100", "--mfu", "0.5"]) == 0
    text = capsys.readouterr().out
    for words in ("parameters", "gradients", "optimizer state", "EMA", "activations", "total", "fits", "A100"):
        assert words in text


@pytest.mark.parametrize("args, key", [
    (["--card", "Voodoo5"], "--card"),
    (["--mfu", "1.5"], "--mfu"),
    (["text_encoder.kind=hf", "text_encoder.path=/nowhere/encoder"], "text_encoder.path"),
    (["trainer.precision=bf17-mixed"], "trainer.precision"),
])  # fmt: skip
def test_bad_input_is_one_line(capsys, args, key):
    assert main(["plan", str(EXPERIMENTS / "tiny.yaml"), *LEARNED_TEXT, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nami: error:") and key in err


def test_2b_plans_full_fsdp_on_8_gpus_and_lora_on_one():
    """Without the weights on this machine: the encoders come from the preset table."""
    full = P.plan_report(load(EXPERIMENTS / "nami_2b.yaml", ["trainer.devices=8"]))
    one = P.plan_report(load(EXPERIMENTS / "nami_2b.yaml", ["trainer.devices=1"]))
    lora = P.plan_report(load(EXPERIMENTS / "nami_2b.yaml", ["finetune.lora.rank=16", "trainer.strategy=auto",
                                                             "trainer.devices=1", "finetune.base_dtype=bfloat16"]))  # fmt: skip
    b, single = full["bytes"], one["bytes"]
    assert full["params"]["trained"] == parameter_counts(load(EXPERIMENTS / "nami_2b.yaml"))["params_total"]
    assert single["parameters"] / 8 <= b["parameters"] <= single["parameters"] / 8 * 1.01  # padding only
    assert b["optimizer"] == pytest.approx(2 * b["gradients"], rel=1e-3) and b["ema"] == b["gradients"]
    assert b["activations_checkpointing"] < b["activations_no_checkpointing"] / 5
    assert {e["name"]: e["params"] for e in full["encoders"]}["text_encoder"] == pytest.approx(5.66e9, rel=0.01)
    assert [c["fits"] for c in full["cards"]] == [False, True, True, True]
    m = lora["params"]
    assert m["lora_modules"] == 8 * 8 + 14 * 2 and m["trained"] == m["lora"] < 0.01 * m["total"]
    assert lora["bytes"]["parameters"] == pytest.approx(2 * m["total"] + 4 * m["lora"], rel=1e-3)  # bf16 base
    assert lora["bytes"]["total"] < single["total"] / 2 and lora["cards"][1]["fits"]


def test_encoders_are_sized_from_their_local_config(tmp_path):
    """A local model folder is read, not loaded: the sizes are those of the models the loaders build (MiniLM
    from its package; a VAE kept in a pipeline folder's vae/)."""
    from diffusers import AutoencoderKL

    from nami.models import build_text_encoder

    cfg = load(EXPERIMENTS / "tiny.yaml")  # the frozen MiniLM the package ships
    (encoder,) = P.encoder_sizes(cfg)
    assert encoder["params"] == sum(p.numel() for p in build_text_encoder(cfg.text_encoder).parameters())
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4)  # fmt: skip
    vae.save_config(tmp_path / "pipeline" / "vae")
    cfg = load(EXPERIMENTS / "tiny.yaml", ["autoencoder.kind=diffusers_kl", f"autoencoder.path={tmp_path / 'pipeline'}",
                                           "autoencoder.channels=4", "autoencoder.downsample=2", "data.precomputed=false"])  # fmt: skip
    sizes = {e["name"]: e for e in P.encoder_sizes(cfg)}
    assert sizes["autoencoder"]["params"] == sum(p.numel() for p in vae.parameters())
    assert sizes["autoencoder"]["bytes"] == 4 * sizes["autoencoder"]["params"]
    assert P.encoder_sizes(load(EXPERIMENTS / "tiny.yaml", ["data.precomputed=true"])) == []
