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


def fresh_directory(base: Path) -> Path:
    """base/0001, base/0002, ...: the first that does not exist yet, made now (so earlier samples stay as
    they were and two calls never share a directory)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    number = max(taken, default=0) + 1
    while True:
        path = base / f"{number:04d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another call took it in the meantime
            number += 1


def write_samples(result: SampleResult, prompts: list[str], out: Path, stages: bool = False) -> list[Path]:
    """Into `out` (best a `fresh_directory`): NNN-<prompt>.png per image (native resolution), with `stages`
    NNN-<prompt>-stages.png, and grid.png. Returns every file written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, prompt in enumerate(prompts):
        path = out / f"{i:03d}-{slug(prompt)}.png"
        save_image((result.images[i].float().cpu() + 1) / 2, path)
        paths.append(path)
        if stages and result.stage_ends:
            strip = zoom(stage_strip(result, i).float().cpu())
            strip_path = out / f"{i:03d}-{slug(prompt)}-stages.png"
            save_image(make_grid(strip, nrow=len(strip), padding=4, pad_value=1.0, normalize=True,
                                 value_range=(-1, 1)), strip_path)  # fmt: skip
            paths.append(strip_path)
    grid = make_grid(zoom(result.images.float().cpu(), 96), nrow=min(8, len(prompts)), padding=2, pad_value=1.0,
                     normalize=True, value_range=(-1, 1))  # fmt: skip
    save_image(grid, out / "grid.png")
    return [*paths, out / "grid.png"]
