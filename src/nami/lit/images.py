"""Writing samples for people to look at: one PNG per prompt, stage strips, and a grid."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from .pipeline import SampleResult


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe version of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "empty"


def zoom(images: torch.Tensor, min_side: int = 128) -> torch.Tensor:
    """Nearest-neighbour enlargement so small (e.g. 32 px) images are visible; keeps pixels crisp."""
    factor = max(1, -(-min_side // images.shape[-1]))
    return F.interpolate(images, scale_factor=factor, mode="nearest") if factor > 1 else images


def stage_strip(result: SampleResult, i: int) -> torch.Tensor:
    """Image i coarse to fine: stage 0's end, then for each later stage its bridged start and its end."""
    panels = [result.stage_ends[0][i]]
    for start, end in zip(result.stage_starts[1:], result.stage_ends[1:]):
        panels += [start[i], end[i]]
    return torch.stack(panels)


def write_samples(result: SampleResult, prompts: list[str], out: Path, stages: bool = False) -> list[Path]:
    """NNN-<prompt>.png per image (native resolution), NNN-<prompt>-stages.png with --stages, grid.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, prompt in enumerate(prompts):
        path = out / f"{i:03d}-{slug(prompt)}.png"
        save_image((result.images[i].float().cpu() + 1) / 2, path)
        paths.append(path)
        if stages and result.stage_ends:
            strip = zoom(stage_strip(result, i).float().cpu())
            save_image(make_grid(strip, nrow=len(strip), padding=4, pad_value=1.0, normalize=True,
                                 value_range=(-1, 1)), out / f"{i:03d}-{slug(prompt)}-stages.png")  # fmt: skip
    grid = make_grid(zoom(result.images.float().cpu(), 96), nrow=min(8, len(prompts)), padding=2, pad_value=1.0,
                     normalize=True, value_range=(-1, 1))  # fmt: skip
    save_image(grid, out / "grid.png")
    return paths
