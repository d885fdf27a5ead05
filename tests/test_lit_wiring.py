"""The NAMI-2B wiring offline: a diffusers AutoencoderKL, a T5 encoder and a CLIP text tower, all tiny and
randomly initialised from small configs of the same classes, trained through the real runner."""

from __future__ import annotations

import pytest
import torch

from nami.config import AutoencoderConfig, ConfigError, load
from nami.lit.runner import pretrain_bridges, train
from nami.models import build_autoencoder, build_text_encoder

from .helpers import EXPERIMENTS


def test_autoencoder_applies_scale_and_shift(tiny_models):
    ae = build_autoencoder(AutoencoderConfig(kind="diffusers_kl", path=str(tiny_models / "vae"), channels=4,
                                             downsample=2))  # fmt: skip
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = ae.encode(images)
    raw = ae.vae.encode(images).latent_dist.mean
    assert latents.shape == (2, 4, 16, 16)
    assert torch.allclose(latents, (raw - 0.1) * ae.vae.config.scaling_factor, atol=1e-6)
    assert ae.decode(latents).shape == images.shape
    assert all(not p.requires_grad for p in ae.parameters())
    with pytest.raises(ConfigError) as err:
        build_autoencoder(AutoencoderConfig(kind="diffusers_kl", path=str(tiny_models / "vae"), channels=16,
                                            downsample=2))  # fmt: skip
    assert err.value.key == "autoencoder.channels"


def test_nami_2b_config_trains_with_vae_t5_and_clip(tmp_path, tiny_models):
    from data_modules.synth import write_shapes

    write_shapes(tmp_path / "shapes", num=48, shards=2, resolution=32)
    cfg = load(EXPERIMENTS / "nami_2b.yaml", [
        "resolution=32", "model.double_blocks=1", "model.single_blocks=2", "model.width=32", "model.heads=2",
        "model.stage_depths=[1,2,3]", "model.patch_size=2",
        f"text_encoder.path={tiny_models / 't5'}", f"text_encoder.pooled_path={tiny_models / 'clip'}",
        "text_encoder.dim=32", "text_encoder.pooled_dim=24", "text_encoder.max_length=8", "text_encoder.dtype=float32",
        f"autoencoder.path={tiny_models / 'vae'}", "autoencoder.channels=4", "autoencoder.downsample=2",
        f"data.shards={tmp_path / 'shapes'}/*.tar", "data.batch_size=6", "data.num_workers=0",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32-true",
        "trainer.activation_checkpointing=false", "trainer.max_steps=2", "trainer.checkpoint_every=2",
        f"trainer.default_root_dir={tmp_path}", "bridge.fit_batches=3", "bridge.heldout_batches=1",
        "sampler.steps=[1,1,1]", "log.sample_prompts=[a red circle]",
    ])  # fmt: skip
    text = build_text_encoder(cfg.text_encoder)(["a red circle", ""])
    assert text.states.shape == (2, 8, 32) and text.pooled.shape == (2, 24)
    report = pretrain_bridges(cfg).report  # encodes full-resolution images with the VAE, pools latents per stage
    assert set(report["heldout_mse"]["conv1x1"]) == {"transition_1", "transition_2"}
    run = train(cfg)
    assert (run / "weights.safetensors").is_file() and (run / "checkpoints" / "step00000002.ckpt").exists()
