"""Writing samples for people to look at: one PNG per prompt, stage strips with captions, and a grid."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid, save_image

from .pipeline import SampleResult


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe version of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "empty"


def zoom(images: torch.Tensor, min_side: int = 128) -> torch.Tensor:
    """Nearest-neighbour enlargement so small (e.g. 32 px) images are visible; keeps pixels crisp."""
    factor = max(1, -(-min_side // images.shape[-1]))
    return F.interpolate(images, scale_factor=factor, mode="nearest") if factor > 1 else images


def stage_panels(result: SampleResult, i: int, starts: bool = True) -> list[tuple[str, torch.Tensor]]:
    """Image i coarse to fine as (title, image) panels from a result sampled with keep_stages: per stage its
    bridged start (stages > 0, with `starts`), its end and, beside the end of every stage but the last, the clean
    image predicted at its last model call (the ends of early stages are mostly noise; the predictions show what
    they already fixed)."""
    stages = result.stages
    last = len(stages.stage_ends) - 1
    panels = []
    for k, end in enumerate(stages.stage_ends):
        if k > 0 and starts:
            panels.append((f"stage {k} start", stages.stage_starts[k][i]))
        panels.append((f"stage {k} end" if k < last else f"stage {k} (final)", end[i]))
        if k < last and stages.stage_predictions:
            panels.append((f"stage {k} x0 pred", stages.stage_predictions[k][i]))
    return panels


def stage_strip(result: SampleResult, i: int) -> torch.Tensor:
    """Image i coarse to fine (`stage_panels`), stacked: (panels, C, H, W)."""
    return torch.stack([image for _, image in stage_panels(result, i)])


CAPTION_WIDTH, TITLE_HEIGHT = 150, 16  # pixels left of the rows (captions) and above the columns (titles)


def captioned_grid(rows: torch.Tensor, captions: list[str], headers: tuple[str, ...] | list[str] = (),
                   cell: int = 96) -> torch.Tensor:  # fmt: skip
    """(3, H, W) image in [0, 1]: rows (R, N, 3, h, w) in [-1, 1] enlarged to about `cell` px, each row's
    caption written to its left and, when given, a title above each column."""
    panels = zoom(rows.flatten(0, 1).float().cpu(), cell)
    grid = make_grid(panels, nrow=rows.shape[1], padding=2, pad_value=1.0, normalize=True, value_range=(-1, 1))
    grid = to_pil_image(grid)
    font = ImageFont.load_default(size=12)
    margin, top = CAPTION_WIDTH, TITLE_HEIGHT if headers else 0
    canvas = Image.new("RGB", (margin + grid.width, top + grid.height), "white")
    canvas.paste(grid, (margin, top))
    draw = ImageDraw.Draw(canvas)
    step = panels.shape[-1] + 2  # make_grid's padding
    for r, caption in enumerate(captions):
        draw.multiline_text((4, top + 4 + r * step), textwrap.fill(caption, 22), fill="black", font=font)
    for j, header in enumerate(headers):
        draw.text((margin + 2 + j * step, 2), header, fill="black", font=font)
    return pil_to_tensor(canvas).float() / 255


def write_samples(result: SampleResult, prompts: list[str], out: Path, stages: bool = False) -> list[Path]:
    """Into `out` (best a `nami.artifacts.files.numbered_directory`): NNN-<prompt>.png per image (native resolution), with `stages`
    NNN-<prompt>-stages.png, and grid.png. Returns every file written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, prompt in enumerate(prompts):
        path = out / f"{i:03d}-{slug(prompt)}.png"
        save_image((result.images[i].float().cpu() + 1) / 2, path)
        paths.append(path)
        if stages and result.stages is not None:
            titles = [title for title, _ in stage_panels(result, i)]
            strip_path = out / f"{i:03d}-{slug(prompt)}-stages.png"
            save_image(captioned_grid(stage_strip(result, i)[None], [prompt], titles, cell=128), strip_path)
            paths.append(strip_path)
    grid = make_grid(zoom(result.images.float().cpu(), 96), nrow=min(8, len(prompts)), padding=2, pad_value=1.0,
                     normalize=True, value_range=(-1, 1))  # fmt: skip
    save_image(grid, out / "grid.png")
    return [*paths, out / "grid.png"]


def save_png(image: torch.Tensor, path: Path) -> None:
    """One (3, H, W) image in [-1, 1] as an 8-bit PNG (rounded as `write_samples` rounds), whatever `path`'s
    suffix (partial files have none)."""
    save_image((image.float().cpu() + 1) / 2, path, format="PNG")
