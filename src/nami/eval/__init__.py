"""Evaluation: the GenEval-Shapes detector and scorer, and FID / CLIPScore with weights from a local path."""

from .detection import detect, to_rgb_uint8
from .geneval import (
    LARGE_PER_CATEGORY,
    binomial_stderr,
    evaluate,
    prompt_set,
    prompts_per_category,
    score_detections,
    score_image,
)
from .metrics import clip_score, fid_score, load_feature_extractor

__all__ = [
    "LARGE_PER_CATEGORY",
    "binomial_stderr",
    "clip_score",
    "detect",
    "evaluate",
    "fid_score",
    "load_feature_extractor",
    "prompt_set",
    "prompts_per_category",
    "score_detections",
    "score_image",
    "to_rgb_uint8",
]
