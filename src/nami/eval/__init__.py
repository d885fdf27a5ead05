"""Evaluation: the GenEval-Shapes detector and scorer, and FID / CLIPScore with weights from a local path."""

from .detection import detect, to_rgb_uint8
from .geneval import evaluate, prompt_set, score_detections, score_image
from .metrics import clip_score, fid_score, load_feature_extractor

__all__ = [
    "clip_score",
    "detect",
    "evaluate",
    "fid_score",
    "load_feature_extractor",
    "prompt_set",
    "score_detections",
    "score_image",
    "to_rgb_uint8",
]
