"""GenEval-Shapes scoring: a fixed seeded prompt set, one image checked against its spec, six category scores.

The check follows GenEval's `evaluate_image`: every `include` entry needs at least `count` detected objects of
its shape (of its colour when `color` is set); `position` [relation, j] must hold between this entry's objects
and entry j's; every `exclude` entry needs fewer than `count` objects of its shape (so counting asks for
exactly N). GenEval keeps a detector's top-`count` boxes by confidence; here the largest by area stand in for
them. Extra objects are allowed unless an `exclude` entry forbids them, as in GenEval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import ConfigError
from .detection import detect
from .shapes import CATEGORIES, make_spec, relation_holds


# `eval.prompt_set`: `standard` is eval.per_category prompts per category (50 by default); `large` is a fixed
# 200 per category (binomial standard error <= 0.035 per category, against 0.071 at 50). make_spec cycles
# through the categories, so a set of N per category is specs 0 .. 6N-1 in order: a smaller set is the start
# of a larger one, prompt for prompt, and since `nami eval` samples prompt i with noise seed eval.seed + i,
# the standard set's images are the first images of the large set.
LARGE_PER_CATEGORY = 200


def prompts_per_category(prompt_set_name: str, per_category: int | None, default: int) -> int:
    """Prompts per category of a named set: `large` is fixed; `standard` is `per_category` or `default`."""
    if prompt_set_name == "large":
        if per_category is not None and per_category != LARGE_PER_CATEGORY:
            raise ConfigError("eval.prompt_set", f"large is a fixed {LARGE_PER_CATEGORY} prompts per "
                                                 f"category; drop --num {per_category} or set "
                                                 "eval.prompt_set=standard")  # fmt: skip
        return LARGE_PER_CATEGORY
    return per_category or default


def prompt_set(per_category: int, seed: int = 1000, resolution: int = 32,
               size: tuple[int, int] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """`per_category` specs of each category in generation order; seed 1000 stays apart from training's 0.

    `size` (height, width in pixels; None: the square resolution) lays the scenes out at that aspect ratio and
    renders them at that size (FID's reference images). Captions, include and exclude do not depend on it: a
    spec draws them before its layout, so every size asks the same prompts."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    square = size is None or tuple(size) == (resolution, resolution)
    quota = dict.fromkeys(CATEGORIES, per_category)
    specs, index = [], 0
    while any(quota.values()):  # make_spec cycles through the categories; the loop does not rely on it
        spec = make_spec(index, seed, resolution) if square else at_size(make_spec(index, seed, resolution,
                                                                                   size[1] / size[0]), size)
        if quota[spec["category"]]:
            quota[spec["category"]] -= 1
            specs.append(spec)
        index += 1
    return specs


def at_size(spec: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """The spec rendered at exactly height x width pixels (its layout drawn for about that aspect ratio)."""
    return {**spec, "height": int(size[0]), "width": int(size[1])}


def _name(req: dict[str, Any]) -> str:
    return f"{req['color']} {req['shape']}" if req.get("color") else req["shape"]


def _describe(objects: Iterable[dict[str, Any]]) -> str:
    names = [f"{o['color']} {o['shape']}" for o in objects]
    return ", ".join(names) if names else "nothing"


def _match(
    req: dict[str, Any], detections: list[dict[str, Any]], groups: list, include: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]] | None, str]:
    """The objects satisfying one include entry (its `count` largest), or None and why not."""
    shape, count, color, name = req["shape"], req["count"], req.get("color"), _name(req)
    found = [d for d in detections if d["shape"] == shape and (color is None or d["color"] == color)]
    found = sorted(found, key=lambda d: -d["area"])[:count]
    if len(found) < count:
        return None, f"expected >= {count} {name}, found {len(found)} (detected: {_describe(detections)})"
    if req.get("position"):
        relation, j = req["position"]
        targets, target = groups[j], _name(include[j])
        if targets is None:
            return None, f"no {target} for the {name} to be {relation}"
        if not all(relation_holds(d["bbox"], t["bbox"], relation) for d in found for t in targets):
            return None, f"expected {name} {relation} {target}, boxes {found[0]['bbox']} vs {targets[0]['bbox']}"
    return found, ""


def score_detections(detections: list[dict[str, Any]], spec: dict[str, Any]) -> tuple[bool, str]:
    """(correct, reason) of detected objects against a spec's include / exclude; reason is '' when correct."""
    reasons, groups = [], []  # groups: the objects that satisfied each include entry so far
    for req in spec["include"]:
        found, reason = _match(req, detections, groups, spec["include"])
        groups.append(found)
        reasons += [reason] if reason else []
    for req in spec.get("exclude", []):
        n = sum(d["shape"] == req["shape"] for d in detections)
        if n >= req["count"]:
            reasons.append(f"expected fewer than {req['count']} {req['shape']}, found {n}")
    return not reasons, "; ".join(reasons)


def score_image(image: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Detect and score one image: {category, caption, correct, reason, detections}."""
    detections = detect(image)
    correct, reason = score_detections(detections, spec)
    return {
        "category": spec["category"],
        "caption": spec["caption"],
        "correct": correct,
        "reason": reason,
        "detections": detections,
    }


def binomial_stderr(correct: int, total: int) -> float | None:
    """Standard error of a fraction correct over `total` independent prompts, sqrt(p (1 - p) / n)."""
    if not total:
        return None
    p = correct / total
    return math.sqrt(p * (1 - p) / total)


def evaluate(images: Iterable[Any], specs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Score images against specs: accuracy per category, `overall` (mean of categories), counts, results, and
    `stderr`: each category's binomial standard error over its prompts, and overall's, sqrt(sum se_c^2) / C
    (the categories' prompts are independent draws).

    Images are anything `detect` takes (PIL, (H, W, 3) uint8 arrays, (3, H, W) tensors in [-1, 1]); a batched
    (N, 3, H, W) tensor iterates as such. A category without images scores None and stays out of `overall`.
    """
    results = []
    for index, (image, spec) in enumerate(zip(images, specs, strict=True)):
        results.append({"index": index, **score_image(image, spec)})
    counts = {c: {"correct": 0, "total": 0} for c in CATEGORIES}
    for r in results:
        counts[r["category"]]["total"] += 1
        counts[r["category"]]["correct"] += int(r["correct"])
    scores: dict[str, Any] = {c: n["correct"] / n["total"] if n["total"] else None for c, n in counts.items()}
    present = [s for s in scores.values() if s is not None]
    scores["overall"] = sum(present) / len(present) if present else None
    stderr: dict[str, Any] = {c: binomial_stderr(n["correct"], n["total"]) for c, n in counts.items()}
    known = [se for se in stderr.values() if se is not None]
    stderr["overall"] = math.sqrt(sum(se * se for se in known)) / len(known) if known else None
    return {**scores, "stderr": stderr, "counts": counts, "results": results}
