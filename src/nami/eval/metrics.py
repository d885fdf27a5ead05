"""FID and CLIPScore through torchmetrics, with weights from a local path only (never a download).

Both return (value, None), or (None, notice) when their weights are not configured or not there: the caller
prints the one-line notice and carries on. Images are anything `detection.to_rgb_uint8` takes, or a batched
(N, 3, H, W) tensor in [-1, 1] / uint8.

FID weights (`eval.fid_weights`) are a state dict in a .safetensors / .pt / .pth file:
- InceptionV3 in torchvision's layout (its ImageNet weights, or pytorch-fid's pt_inception FID weights,
  whose 1008-class head is dropped): recognised by its keys, fed 299 px in [-1, 1], 2048-d pool features.
  torchvision's blocks pool slightly differently from the TF graph, so values track, but do not equal,
  reference FID numbers.
- any timm model: a .safetensors whose metadata names it, {"arch": "<timm name>"} (optionally "input_size"),
  fed at its pretrained input size and normalisation, pooled features (num_classes=0).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .detection import to_rgb_uint8

INCEPTION = "inception_v3"


def _missing(path: str | Path | None, key: str, what: str) -> str | None:
    """The notice for an unset or absent weights path, else None."""
    if not path:
        return f"{what} skipped: {key} is not set"
    if not Path(path).exists():
        return f"{what} skipped: {key}={path} does not exist"
    return None


def uint8_batches(images: Iterable[Any], batch_size: int) -> Iterator[torch.Tensor]:
    """(B, 3, H, W) uint8 tensors from any iterable of images."""
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(to_rgb_uint8(image))
        if len(batch) == batch_size:
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


class FeatureExtractor(nn.Module):
    """Frozen backbone for FID: (N, 3, H, W) float in [0, 1] -> (N, num_features), resized and normalised."""

    def __init__(
        self, backbone: nn.Module, num_features: int, size: int, mean: Sequence[float], std: Sequence[float]
    ):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.num_features = num_features  # torchmetrics reads it instead of probing with a dummy image
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # batch norm statistics stay those of the weights

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.backbone((x - self.mean) / self.std).flatten(1)


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and safetensors metadata ({} for torch files, read with weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state, {}


def load_feature_extractor(path: str | Path) -> FeatureExtractor:
    """The FID feature extractor for a local weights file (see the module docstring for the formats)."""
    path = Path(path)
    state, meta = _read_state(path)
    arch = meta.get("arch") or (INCEPTION if any(k.startswith("Mixed_7c.") for k in state) else None)
    if arch is None:
        raise ValueError(
            f"{path}: not InceptionV3 weights in torchvision's layout; for another model save a .safetensors "
            'with metadata {"arch": "<timm model name>"}'
        )
    if arch == INCEPTION:
        from torchvision.models import inception_v3

        classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=classes)
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")})
        net.fc = nn.Identity()
        size = int(meta.get("input_size", 299))
        return FeatureExtractor(net, 2048, size, (0.5,) * 3, (0.5,) * 3)  # Inception expects [-1, 1]
    import timm

    net = timm.create_model(arch, pretrained=False, num_classes=0)
    missing, _ = net.load_state_dict(state, strict=False)  # unexpected keys: the classifier head
    if missing:
        raise ValueError(f"{path}: timm model {arch!r} lacks {len(missing)} weights, e.g. {missing[0]}")
    cfg = net.pretrained_cfg
    size = int(meta.get("input_size", cfg.get("input_size", (3, 224, 224))[-1]))
    mean, std = cfg.get("mean", (0.5,) * 3), cfg.get("std", (0.5,) * 3)
    return FeatureExtractor(net, net.num_features, size, mean, std)


def fid_score(
    real: Iterable[Any],
    fake: Iterable[Any],
    weights_path: str | Path | None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[float | None, str | None]:
    """FID between two image sets with a local feature extractor; (None, notice) without weights."""
    notice = _missing(weights_path, "eval.fid_weights", "FID")
    if notice:
        return None, notice
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=load_feature_extractor(weights_path), normalize=True).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for batch in uint8_batches(images, batch_size):
            metric.update(batch.to(device).float() / 255, real=is_real)
    return float(metric.compute()), None


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
    for batch in uint8_batches(images, batch_size):
        texts = prompts[start : start + len(batch)]
        if len(texts) != len(batch):
            raise ValueError(f"clip_score: more images than prompts ({len(prompts)})")
        metric.update(list(batch.to(device)), texts)
        start += len(batch)
    if start != len(prompts):
        raise ValueError(f"clip_score: {len(prompts)} prompts for {start} images")
    return float(metric.compute()), None
