"""Image <-> model space: `pixel` (identity; the tiny config) and diffusers' AutoencoderKL (FLUX / SD3 VAE).

Images are (B, 3, H, W) in [-1, 1]; latents are (B, channels, H / downsample, W / downsample), scaled to
about unit variance with the VAE's own scaling and shift factors.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..config import AutoencoderConfig, ConfigError
from ..config.validation import check_built
from ..registry import AUTOENCODERS
from .model_paths import local_folder


class Autoencoder(nn.Module):
    """Base: `channels`, `downsample`; encode(images) -> latents, decode(latents) -> images."""

    def __init__(self, channels: int, downsample: int):
        super().__init__()
        self.channels, self.downsample = channels, downsample

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelAutoencoder(Autoencoder):
    """The identity: the model works on pixels."""

    def __init__(self):
        super().__init__(3, 1)

    def encode(self, images):
        return images

    def decode(self, latents):
        return latents


class DiffusersKLAutoencoder(Autoencoder):
    """A frozen diffusers AutoencoderKL; latents = (mean - shift) * scale, as FLUX and SD3 do."""

    def __init__(self, path: str, scaling_factor: float | None = None, shift_factor: float | None = None):
        vae = load_autoencoder_kl(path)
        config = vae.config
        super().__init__(config.latent_channels, 2 ** (len(config.block_out_channels) - 1))
        self.vae = vae.requires_grad_(False).eval()
        self.scaling_factor = scaling_factor if scaling_factor is not None else config.scaling_factor
        shift = shift_factor if shift_factor is not None else getattr(config, "shift_factor", None)
        self.shift_factor = shift or 0.0

    def train(self, mode: bool = True):  # frozen: stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def encode(self, images):
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return (posterior.mean.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents):
        z = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()


VAE_SUBFOLDER = "vae"  # where a diffusers pipeline repository (FLUX.1, SD3) keeps its VAE


def vae_subfolders(path: str) -> tuple[str | None, ...]:
    """Where to look for the VAE's config.json under `path`, in order: a local folder holds it at its root or in
    vae/ (one line naming both when neither); a hub repository is tried at its root, then in vae/ (each
    attempt goes through the library, which reads its cache when offline)."""
    folder = local_folder(path, "autoencoder.path")
    if folder is None:
        return (None, VAE_SUBFOLDER)
    for subfolder in (None, VAE_SUBFOLDER):
        if (folder / (subfolder or "") / "config.json").is_file():
            return (subfolder,)
    raise ConfigError("autoencoder.path", f"no config.json in {folder} nor in {folder / VAE_SUBFOLDER}: not a "
                                          f"diffusers AutoencoderKL folder")  # fmt: skip


def load_autoencoder_kl(path: str):
    """diffusers' AutoencoderKL at `path`'s root or its vae/ subfolder (`vae_subfolders`); a failure is one line
    with the library's first line from the last place tried."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ConfigError("autoencoder.kind", "diffusers_kl needs diffusers: pip install -e '.[gpu]'") from None
    attempts, error = vae_subfolders(path), None
    for subfolder in attempts:
        try:
            with warnings.catch_warnings():  # diffusers passes hf_hub_download an argument it deprecated
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                return AutoencoderKL.from_pretrained(path, subfolder=subfolder)
        except (OSError, ValueError) as err:
            error = err
    where = f"{path} (its root or {VAE_SUBFOLDER}/)" if len(attempts) > 1 else path
    raise ConfigError("autoencoder.path", f"cannot load AutoencoderKL from {where} "
                                          f"({str(error).splitlines()[0]})") from None


@AUTOENCODERS.register("pixel")
def _pixel(cfg: AutoencoderConfig) -> Autoencoder:
    return PixelAutoencoder()


@AUTOENCODERS.register("diffusers_kl")
def _diffusers_kl(cfg: AutoencoderConfig) -> Autoencoder:
    return DiffusersKLAutoencoder(cfg.path, cfg.scaling_factor, cfg.shift_factor)


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    """The configured kind; its channels / downsample must match the config the model is built for."""
    ae = AUTOENCODERS.build(cfg.kind, cfg)
    check_built("autoencoder", cfg.kind, {"channels": (cfg.channels, ae.channels),
                                          "downsample": (cfg.downsample, ae.downsample)})  # fmt: skip
    return ae
