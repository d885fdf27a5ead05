"""FID and CLIPScore with weights from a local path only (never a download), for in-memory image sets (the
evaluations of `nami eval` and of training; `nami eval fid` / `clip` on folders use the same functions).

Both return (value, None), or (None, notice) when their weights are not configured or not there: the caller
prints the one-line notice and carries on. Images are anything `detection.to_rgb_uint8` takes, or a batched
(N, 3, H, W) tensor in [-1, 1] / uint8.

FID (`eval.fid_weights`): the FID Inception network and the reference's preprocessing and statistics,
`nami.eval.fid`. CLIPScore (`eval.clip_path`): torchmetrics' CLIPScore, 100 * max(cos(image, text), 0)
averaged, with a local CLIPModel + CLIPProcessor directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .detection import to_rgb_uint8
from .fid import FidStatistics, frechet_distance, inception_features, load_inception


def _missing(path: str | Path | None, key: str, what: str) -> str | None:
    """The notice for an unset or absent weights path, else None."""
    if not path:
        return f"{what} skipped: {key} is not set"
    if not Path(path).exists():
        return f"{what} skipped: {key}={path} does not exist"
    return None


def fid_score(
    real: Iterable[Any],
    fake: Iterable[Any],
    weights_path: str | Path | None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    reference: FidStatistics | None = None,
) -> tuple[float | None, str | None]:
    """FID (nami.eval.fid: the FID Inception, the reference's resize, float64 statistics) between two image sets,
    or between `fake` and precomputed `reference` statistics (`real` then unused); (None, notice) without
    weights."""
    notice = _missing(weights_path, "eval.fid_weights", "FID")
    if notice:
        return None, notice
    network = load_inception(weights_path, "eval.fid_weights")
    if reference is None:
        reference = FidStatistics.of(inception_features(network, real, batch_size, device))
    generated = FidStatistics.of(inception_features(network, fake, batch_size, device))
    return frechet_distance(reference, generated), None


class _ClipFeatures(nn.Module):
    """CLIPModel with the interface torchmetrics 1.9 expects: get_*_features returning embedding tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.config = model.config  # torchmetrics reads the text length limit from it

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: an output object

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    @torch.no_grad()
    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def clip_score(
    images: Iterable[Any],
    prompts: Sequence[str],
    clip_path: str | Path | None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[float | None, str | None]:
    """torchmetrics CLIPScore (mean 100 * cosine, floored at 0) of images vs prompts, or (None, notice)."""
    notice = _missing(clip_path, "eval.clip_path", "CLIPScore")
    if notice:
        return None, notice
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    # torchmetrics 1.9 takes only hub names it knows, and calls `.norm` on get_image_features' result, which
    # transformers 5 returns as an output object. Its callable hook hands it a local model behind an adapter
    # that returns plain embeddings; the scoring itself stays torchmetrics'.
    model = _ClipFeatures(CLIPModel.from_pretrained(str(clip_path)))
    processor = CLIPProcessor.from_pretrained(str(clip_path))
    metric = CLIPScore(model_name_or_path=lambda: (model, processor)).to(device)
    prompts = list(prompts)
    start = 0
    for batch in _image_lists(images, batch_size):
        texts = prompts[start : start + len(batch)]
        if len(texts) != len(batch):
            raise ValueError(f"clip_score: more images than prompts ({len(prompts)})")
        metric.update([image.to(device) for image in batch], texts)
        start += len(batch)
    if start != len(prompts):
        raise ValueError(f"clip_score: {len(prompts)} prompts for {start} images")
    return float(metric.compute()), None


def _image_lists(images: Iterable[Any], batch_size: int) -> Iterator[list[torch.Tensor]]:
    """Lists of (3, H, W) uint8 tensors (sizes may differ: the CLIP processor resizes each image)."""
    batch: list[torch.Tensor] = []
    for image in images:
        batch.append(torch.from_numpy(to_rgb_uint8(image).copy()).permute(2, 0, 1))  # PIL's arrays are read-only
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
