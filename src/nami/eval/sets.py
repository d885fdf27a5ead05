"""What the evaluation during training samples and how it scores it (`eval.kind`), for `EvalCallback`.

Both sets offer `prompts` and `seeds` (image j samples prompt j with seed j), `size` (the (height, width) in pixels
they are sampled at: eval.size, else the square) and `score(images, device)`, a dict of floats logged as
eval/<name>:
- `ShapesSet` (`shapes`, the default): the first `eval.train_per_category` prompts per category of `nami eval`'s
  GenEval-Shapes set with its noise seeds; the six categories, overall, and FID / CLIPScore with weights.
- `PromptSet` (`prompts`): a fixed prompt file (`eval.prompts`, read by the caller) with fixed seeds; CLIP
  score with `eval.clip_path`, and FID against `eval.fid_reference` (image folder or .npz statistics) with
  `eval.fid_weights`. Its reference statistics and networks are computed once and kept.
"""

from __future__ import annotations

import torch

from ..config.buckets import eval_size
from .fid import FidStatistics, frechet_distance, inception_features, load_inception, reference_statistics
from .geneval import prompt_set
from .metrics import clip_score
from .report import prompt_set_identity, score_images
from .shapes import CATEGORIES


class ShapesSet:
    kind = "shapes"

    def __init__(self, cfg, per_category: int):
        self.cfg = cfg
        self.size = eval_size(cfg)  # (height, width) sampled at
        self.specs = prompt_set(per_category, cfg.eval.seed, cfg.resolution, self.size)
        self.prompts = [s["caption"] for s in self.specs]
        self.seeds = [cfg.eval.seed + j for j in range(len(self.specs))]  # as `nami eval` samples them
        self.identity = prompt_set_identity(self.specs, "standard", cfg.eval.seed)

    def score(self, images: torch.Tensor, device: str | torch.device = "cpu") -> dict[str, float]:
        report = score_images(self.cfg, self.specs, images, "standard")
        return {name: float(report[name]) for name in (*CATEGORIES, "overall", "fid", "clip_score")
                if report[name] is not None}  # fmt: skip

    @staticmethod
    def summary(scores: dict[str, float]) -> str:
        return f"overall {scores['overall']:.3f}"


class PromptSet:
    kind = "prompts"

    def __init__(self, cfg, prompts: list[str], seeds: list[int]):
        self.cfg, self.prompts, self.seeds = cfg, list(prompts), list(seeds)
        self.size = eval_size(cfg)  # (height, width) sampled at
        self.identity = None  # keep_best ranks GenEval-Shapes only (config validation)
        self._inception: torch.nn.Module | None = None
        self._reference: FidStatistics | None = None

    def score(self, images: torch.Tensor, device: str | torch.device = "cpu") -> dict[str, float]:
        e = self.cfg.eval
        scores = {}
        if e.clip_path:
            scores["clip_score"], _ = clip_score(images, self.prompts, e.clip_path, e.batch_size, device)
        if e.fid_reference:
            if self._inception is None:
                self._inception = load_inception(e.fid_weights, "eval.fid_weights")
                self._reference = reference_statistics(e.fid_reference, self._inception, e.batch_size, device,
                                                       "eval.fid_reference")  # fmt: skip
            generated = FidStatistics.of(inception_features(self._inception, images, e.batch_size, device))
            scores["fid"] = frechet_distance(self._reference, generated)
        return {name: float(value) for name, value in scores.items() if value is not None}

    @staticmethod
    def summary(scores: dict[str, float]) -> str:
        return ", ".join(f"{name} {value:.3f}" for name, value in scores.items()) or "images logged"
