"""Sampling: prompts -> images with built parts, and what is written for people to look at.

pipeline.py   `Pipeline.from_config(parts, cfg)` (sampler settings resolved once: steps per mode, guidance, mode,
              prompt suffix, negative prompt, precision; prompts, seeds and initial latents per call) and
              `SampleResult`
precision.py  trainer.precision / sampler.precision -> autocast and cast dtypes; denormal flushing
images.py     PNGs, stage strips and captioned grids
hub.py        `NamiPipeline`: a model directory in a notebook (Hugging Face `ModelHubMixin`)

Nothing here imports Lightning; `nami.lit.inference` wraps a `Pipeline` for Lightning's multi-device predict.
"""

from .pipeline import Pipeline, SampleResult, SamplerSettings

__all__ = ["Pipeline", "SampleResult", "SamplerSettings"]
