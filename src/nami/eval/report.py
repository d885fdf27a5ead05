"""`nami eval` and the evaluations during training: sample the fixed GenEval-Shapes prompt set with a sampling
`Pipeline` and score it (plus FID / CLIPScore with weights)."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import torch

from ..config.buckets import eval_size
from .geneval import evaluate, prompt_set, prompts_per_category
from .metrics import clip_score, fid_score


def prompt_set_identity(specs: list[dict], name: str, seed: int) -> dict:
    """What makes two evaluations paired: the prompts and the noise seeds (prompt i samples with seed + i).

    Two reports with the same `digest` scored the same prompts with the same noise, so their per-prompt
    results can be compared one to one (`nami ablate` checks this across arms)."""
    asked = [[s["category"], s["caption"], s["include"], s["exclude"]] for s in specs]  # not the render size
    digest = hashlib.sha256(json.dumps([asked, seed], sort_keys=True).encode()).hexdigest()[:16]
    per_category = len(specs) // len({s["category"] for s in specs})
    return {"name": name, "per_category": per_category, "seed": seed, "digest": digest}


def score_images(cfg, specs: list[dict], images, set_name: str | None = None) -> dict:
    """GenEval-Shapes scores of images sampled for `specs` (per category, overall, their standard errors,
    per-image results), the prompt set's identity, and FID / CLIPScore when configured (None otherwise, with
    a line in `notices`). The one scoring path of `nami eval` and of the evaluation during training."""
    from .shapes import render

    captions = [s["caption"] for s in specs]
    report = evaluate(images, specs)
    identity = prompt_set_identity(specs, set_name or cfg.eval.prompt_set, cfg.eval.seed)
    report.update(prompt_set=identity, notices=[])

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


def evaluate_pipeline(pipeline, cfg, per_category: int | None = None, progress: bool = True) -> dict:
    """Category scores, overall (mean of the six), their binomial standard errors (`stderr`), sampling time,
    the prompt set's identity (`prompt_set`), and FID / CLIPScore when configured. `pipeline` is a
    `nami.sampling.Pipeline` over the weights to score; it samples with its own settings."""
    return sample_and_score(pipeline, cfg, per_category, progress)[0]


def sample_and_score(pipeline, cfg, per_category: int | None = None, progress: bool = True, stop=None):
    """`evaluate_pipeline`'s report and the images it scored ((N, 3, H, W) in [-1, 1], prompt i sampled with
    noise seed eval.seed + i; `report["results"][i]` is image i's). `stop` (`Pipeline.sample`'s) ending the
    sampling early: (None, the images sampled), nothing scored."""
    count = prompts_per_category(cfg.eval.prompt_set, per_category, cfg.eval.per_category)
    height, width = eval_size(cfg)
    specs = prompt_set(count, cfg.eval.seed, cfg.resolution, (height, width))
    captions = [s["caption"] for s in specs]
    start = time.perf_counter()
    images = pipeline.sample(captions, seed=cfg.eval.seed, batch_size=cfg.eval.batch_size, progress=progress,
                             height=height, width=width, stop=stop).images  # fmt: skip
    if len(images) < len(captions):
        return None, images
    sampling_s = time.perf_counter() - start
    report = score_images(cfg, specs, images)
    settings = pipeline.settings
    report.update(images=len(specs), sampling_s=sampling_s, mode=settings.mode, steps=settings.steps_for(),
                  guidance=settings.guidance, height=height, width=width)  # fmt: skip
    return report, images


def format_eval(report: dict) -> str:
    """Human-readable scores (per-image results stay in the JSON)."""
    from .shapes import CATEGORIES

    lines = [f"GenEval-Shapes, {report['images']} images of {report['height']}x{report['width']} px "
             f"({report['mode']}, steps {report['steps']}, "
             f"guidance {report['guidance']}, sampled in {report['sampling_s']:.1f}s); "
             "+- binomial standard error"]  # fmt: skip
    for category in CATEGORIES:
        counts = report["counts"][category]
        lines.append(f"  {category:<14} {report[category]:.3f} +- {report['stderr'][category]:.3f}  "
                     f"({counts['correct']}/{counts['total']})")  # fmt: skip
    lines.append(f"  {'overall':<14} {report['overall']:.3f} +- {report['stderr']['overall']:.3f}")
    for name in ("fid", "clip_score"):
        if report[name] is not None:
            lines.append(f"  {name:<14} {report[name]:.3f}")
    lines += [f"  ({notice})" for notice in report["notices"]]
    return "\n".join(lines)
