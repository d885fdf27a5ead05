"""A local stand-in for the Hugging Face Hub holding a tiny NAMI-2B release, and a `snapshot_download` that
serves it in-process (huggingface_hub's own pattern filter and dry-run records), so `nami release download`
runs its real layout logic offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .official_fixtures import write_release, write_text_encoders

# Files each repository also holds that the release does not need: fetching one is a bug (50 GB for mT5-XXL's
# TensorFlow weights, HunyuanDiT's own mT5-XL and DiT).
DECOYS = {"qihoo360/NAMI-T2I": ["README.md", "examples.png"],
          "Tencent-Hunyuan/HunyuanDiT": ["t2i/mt5/config.json", "t2i/model/pytorch_model_ema.pt", "README.md"],
          "google/mt5-xxl": ["tf_model.h5", "flax_model.msgpack", "README.md"]}  # fmt: skip
# Sizes of the VAE the tiny release ships: 3 latent channels at the pixels' own size (one block: downsample 1),
# so the tiny pixel-space transformer of official_fixtures runs on its latents unchanged.
VAE_OVERRIDES = ["autoencoder.kind=diffusers_kl", "autoencoder.channels=3", "autoencoder.downsample=1"]


def tiny_vae(latent_channels: int = 3, blocks: int = 1, seed: int = 0):
    """A random diffusers AutoencoderKL, downsampling 2^(blocks-1)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(4,) * blocks, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, layers_per_block=1, norm_num_groups=2,
                         sample_size=32, shift_factor=0.1)  # fmt: skip


def write_hub(root: Path) -> Path:
    """root/<org>/<name>/... laid out as the three repositories publish the release's pieces."""
    nami, hunyuan, mt5 = (root / repo for repo in DECOYS)
    write_release(nami)
    tiny_vae().save_pretrained(nami / "vae")
    encoders = write_text_encoders(root / "encoders")[0].parent
    shutil.copytree(encoders / "mclip" / "clip_text_encoder", hunyuan / "t2i" / "clip_text_encoder")
    shutil.copytree(encoders / "mclip" / "tokenizer", hunyuan / "t2i" / "tokenizer")
    shutil.copytree(encoders / "mt5", mt5)
    shutil.rmtree(encoders)
    for repo, names in DECOYS.items():
        for name in names:
            (root / repo / name).parent.mkdir(parents=True, exist_ok=True)
            (root / repo / name).write_text(f"not part of the release: {repo}/{name}\n")
    return root


class FakeHub:
    """`snapshot_download(repo_id, allow_patterns=..., local_dir=..., dry_run=...)` over a `write_hub` folder,
    recording every call as (repo_id, dry_run, allow_patterns)."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def snapshot_download(self, repo_id, *, allow_patterns=None, local_dir=None, dry_run=False, **kwargs):
        from huggingface_hub.file_download import DryRunFileInfo
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append((repo_id, dry_run, sorted(allow_patterns or [])))
        repo, local_dir = self.root / repo_id, Path(local_dir)
        files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
        chosen = list(filter_repo_objects(files, allow_patterns=allow_patterns))
        if dry_run:
            return [DryRunFileInfo(commit_hash="0" * 40, file_size=(repo / f).stat().st_size, filename=f,
                                   local_path=str(local_dir / f), is_cached=False,
                                   will_download=not (local_dir / f).is_file()) for f in chosen]  # fmt: skip
        for name in chosen:
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / name, local_dir / name)
        return str(local_dir)
