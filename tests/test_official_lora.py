"""A LoRA adapter trained with the kit, converted to diffusers' Flux LoRA keys (`nami convert official --reverse`
of a LoRA model directory), gives diffusers' own FluxTransformer2DModel, with the adapter loaded by diffusers'
PEFT integration, the kit's output stage by stage (issue 22: the release's own pipeline can load it)."""

from __future__ import annotations


import torch
from safetensors.torch import load_file

from nami.artifacts.lora import write_adapter
from nami.cli import main
from nami.config import load
from nami.models import build_model
from nami.models.lora import AdapterSpec, adapter_state, add_adapter
from nami.models.official import official_to_kit

from .official_fixtures import OFFICIAL, POOLED_DIM, TEXT_DIM, TINY, flux_output, random_flux

ATOL = 1e-5


def _random_adapter(model, spec, seed: int = 4) -> dict:
    from peft import set_peft_model_state_dict

    add_adapter(model, spec)
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.2 * torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()}
    set_peft_model_state_dict(model, state)
    return state


@torch.no_grad()
def test_every_stage_with_the_adapter_matches_diffusers_flux_with_the_converted_adapter(tmp_path):
    cfg = load(OFFICIAL, [*TINY, "finetune.lora.rank=4", "finetune.lora.alpha=6"])
    reference = random_flux()
    state = reference.state_dict()
    model = build_model(cfg).eval()
    model.load_state_dict(official_to_kit(state, cfg.model.double_blocks, cfg.model.single_blocks))
    spec = AdapterSpec.from_config(cfg.finetune.lora, cfg.model, model)
    assert any(m.endswith("linear1") for m in spec.modules) and any(m.endswith("attn.qkv") for m in spec.modules)
    kit_adapter = _random_adapter(model, spec)
    # the kit's way out: a LoRA model directory, converted by the command
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    write_adapter(adapter_dir, spec.peft_config(), kit_adapter, base=None)
    assert main(["convert", "official", str(OFFICIAL), *TINY, "finetune.lora.rank=4", "finetune.lora.alpha=6",
                 "--reverse", "--transformer", str(adapter_dir), "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    lora = load_file(str(tmp_path / "out" / "pytorch_lora_weights.safetensors"))
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in lora)
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight" in lora  # the fused input, split
    g = torch.Generator().manual_seed(3)
    states, pooled = torch.randn(2, 7, TEXT_DIM, generator=g), torch.randn(2, POOLED_DIM, generator=g)
    t = torch.tensor([0.97166, 0.386])
    diffs, effects = [], []
    for k, side in enumerate(cfg.stage_latent_sizes()):
        z = torch.randn(2, 3, side, side, generator=g)
        ours = model(z, t * 1000, states, None, pooled, stage=k)
        theirs = flux_output(state, cfg.model.stage_depths[k], z, t, states, pooled, lora)
        plain = flux_output(state, cfg.model.stage_depths[k], z, t, states, pooled)
        diffs.append((ours - theirs).abs().max().item())
        effects.append((theirs - plain).abs().max().item())
    print("max abs difference per stage:", diffs, "adapter's effect:", effects)
    assert max(diffs) <= ATOL, diffs
    assert min(effects) > 100 * ATOL  # the adapter changes every stage's output far beyond the tolerance
