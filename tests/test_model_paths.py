"""Model paths that point at a local folder or a hub repository: the VAE found in a `vae/` subfolder (diffusers
pipeline repositories such as nami_2b.yaml's FLUX.1-dev fallback keep it there), locally and from the hub's
cache offline, and a path meant as a local folder that is not there named in one line."""

from __future__ import annotations

import pytest
import torch

import huggingface_hub
from nami.config import ConfigError, load
from nami.models import DiffusersKLAutoencoder, build_autoencoder, build_text_encoder
from nami.models.model_paths import meant_local

from .helpers import EXPERIMENTS
from .release_fixtures import tiny_vae


def _decoded(autoencoder) -> torch.Tensor:
    torch.manual_seed(1)
    return autoencoder.decode(torch.randn(1, autoencoder.channels, 4, 4))


def _pipeline_folder(root, vae):
    """A diffusers pipeline laid out as on the hub: model_index.json at the root, the VAE in vae/."""
    vae.save_pretrained(root / "vae")
    (root / "model_index.json").write_text('{"_class_name": "FluxPipeline", "vae": ["diffusers", '
                                           '"AutoencoderKL"]}')  # fmt: skip
    return root


def _cached_repo(cache, repo_id, folder):
    """`folder` as the hub cache holds a downloaded snapshot of `repo_id` (refs/main -> snapshots/<sha>)."""
    import shutil

    sha = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, entry / "snapshots" / sha)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(sha)


def test_a_local_vae_in_a_vae_subfolder_loads_as_the_vae_itself(tmp_path):
    pipeline = _pipeline_folder(tmp_path / "pipeline", tiny_vae(latent_channels=4, blocks=2))
    from_pipeline, direct = DiffusersKLAutoencoder(str(pipeline)), DiffusersKLAutoencoder(str(pipeline / "vae"))
    assert (from_pipeline.channels, from_pipeline.downsample) == (4, 2)
    assert from_pipeline.shift_factor == pytest.approx(0.1)  # its config was read, not a default
    assert torch.equal(_decoded(from_pipeline), _decoded(direct))


def test_the_flux_fallback_loads_its_vae_subfolder_from_the_hub_cache_offline(tmp_path, monkeypatch):
    """nami_2b.yaml's autoencoder.path falls back to black-forest-labs/FLUX.1-dev, whose VAE sits in vae/: with
    HF_HUB_OFFLINE=1 and the repository in the cache, the root is tried, then vae/, and the VAE loads."""
    monkeypatch.delenv("NAMI_VAE", raising=False)
    cfg = load(EXPERIMENTS / "nami_2b.yaml")
    assert cfg.autoencoder.path == "black-forest-labs/FLUX.1-dev" and not meant_local(cfg.autoencoder.path)
    vae = tiny_vae(latent_channels=16, blocks=4)  # the FLUX VAE's 16 channels and 8x downsampling, tiny
    _cached_repo(tmp_path / "hub", cfg.autoencoder.path, _pipeline_folder(tmp_path / "flux", vae))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    autoencoder = build_autoencoder(cfg.autoencoder)  # channels 16 / downsample 8 checked against the config
    assert torch.equal(_decoded(autoencoder), _decoded(DiffusersKLAutoencoder(str(tmp_path / "flux" / "vae"))))


def test_a_hub_repository_with_the_vae_at_its_root_still_loads(tmp_path, monkeypatch):
    tiny_vae(latent_channels=4, blocks=2).save_pretrained(tmp_path / "plain")
    _cached_repo(tmp_path / "hub", "someone/plain-vae", tmp_path / "plain")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert DiffusersKLAutoencoder("someone/plain-vae").channels == 4


def test_a_folder_without_a_vae_names_both_places_it_looked(tmp_path):
    (tmp_path / "empty" / "vae").mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        DiffusersKLAutoencoder(str(tmp_path / "empty"))
    assert err.value.key == "autoencoder.path"
    assert f"no config.json in {tmp_path / 'empty'} nor in {tmp_path / 'empty' / 'vae'}" in str(err.value)


LOCAL = ["weights/mt5", "weights/mclip/clip_text_encoder", "./mt5", "/abs/mt5", "~/mt5"]
HUB = ["google/mt5-xxl", "black-forest-labs/FLUX.1-dev"]


@pytest.mark.parametrize("path, local", [(p, True) for p in LOCAL] + [(p, False) for p in HUB])
def test_which_paths_are_meant_as_local_folders(path, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()  # `weights/mt5` is a valid repository id: the folder beside it decides
    assert meant_local(path) is local


def test_the_official_preset_with_nami_weights_absent_names_the_key_and_the_path(tmp_path, monkeypatch):
    for name in ("NAMI_TEXT_ENCODER", "NAMI_POOLED_ENCODER", "NAMI_VAE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NAMI_WEIGHTS", str(tmp_path / "nowhere"))
    cfg = load(EXPERIMENTS / "nami_2b_official.yaml")
    with pytest.raises(ConfigError) as err:
        build_text_encoder(cfg.text_encoder)
    assert err.value.key == "text_encoder.path"
    assert f"{tmp_path / 'nowhere' / 'mt5'} does not exist" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_autoencoder(cfg.autoencoder)
    assert err.value.key == "autoencoder.path"
    assert f"{tmp_path / 'nowhere' / 'vae'} does not exist" in str(err.value)
