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
from .fid import FidStatistics, frechet_distance, load_inception
from .metrics import clip_score, fid_score

__all__ = [
    "LARGE_PER_CATEGORY",
    "binomial_stderr",
    "clip_score",
    "detect",
    "evaluate",
    "fid_score",
    "FidStatistics",
    "frechet_distance",
    "load_inception",
    "prompt_set",
    "prompts_per_category",
    "score_detections",
    "score_image",
    "to_rgb_uint8",
]
