"""`nami eval`: sample the fixed GenEval-Shapes prompt set and score it (plus FID / CLIPScore with weights)."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..eval import clip_score, evaluate, fid_score, prompt_set
from .inference import ProgressiveInferenceModule, predict


def evaluate_module(module: ProgressiveInferenceModule, per_category: int | None = None, progress: bool = True) -> dict:
    """Category scores, overall (mean of the six), sampling time, and FID / CLIPScore when configured."""
    from nami.eval.shapes import render

    cfg = module.cfg
    specs = prompt_set(per_category or cfg.eval.per_category, cfg.eval.seed, cfg.resolution)
    captions = [s["caption"] for s in specs]
    start = time.perf_counter()
    images = predict(module, captions, seed=cfg.eval.seed, batch_size=cfg.eval.batch_size, progress=progress).images
    sampling_s = time.perf_counter() - start
    report = evaluate(images, specs)
    report.update(images=len(specs), sampling_s=sampling_s, mode=cfg.sampler.mode, steps=cfg.sampler.steps_for(),
                  guidance=cfg.sampler.guidance, notices=[])  # fmt: skip

    def reference_images():  # the ground-truth renders of the same specs are FID's real set
        return torch.stack([torch.from_numpy(np.array(render(s))).permute(2, 0, 1) for s in specs])

    for name, (value, notice) in (
        ("fid", fid_score(reference_images() if cfg.eval.fid_weights else [], images, cfg.eval.fid_weights)),
        ("clip_score", clip_score(images, captions, cfg.eval.clip_path)),
    ):
        report[name] = value
        if notice:
            report["notices"].append(notice)
    return report


def format_eval(report: dict) -> str:
    """Human-readable scores (per-image results stay in the JSON)."""
    from nami.eval.shapes import CATEGORIES

    lines = [f"GenEval-Shapes, {report['images']} images ({report['mode']}, steps {report['steps']}, "
             f"guidance {report['guidance']}, sampled in {report['sampling_s']:.1f}s)"]  # fmt: skip
    for category in CATEGORIES:
        counts = report["counts"][category]
        lines.append(f"  {category:<14} {report[category]:.3f}  ({counts['correct']}/{counts['total']})")
    lines.append(f"  {'overall':<14} {report['overall']:.3f}")
    for name in ("fid", "clip_score"):
        if report[name] is not None:
            lines.append(f"  {name:<14} {report[name]:.3f}")
    lines += [f"  ({notice})" for notice in report["notices"]]
    return "\n".join(lines)
