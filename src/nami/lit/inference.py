"""`ProgressiveInferenceModule`: a sampling `Pipeline` as a LightningModule, for Lightning's multi-device
prediction (`Trainer(devices=N).predict(module, prompt_batches)`) and `load_from_checkpoint`. One process on
one device needs none of this: `nami sample`, `nami eval` and `NamiPipeline` call `nami.sampling.Pipeline`."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from ..config import NamiConfig, config_from_dict, to_dict
from ..parts import Parts, build_parts, trained_parts
from ..sampling import Pipeline, SampleResult


class ProgressiveInferenceModule(L.LightningModule):
    """predict_step maps {"prompts": [...], "seeds": [...]} to a `SampleResult` with the configured sampler
    (`sampler.mode`: progressive, no_nesting or uniform); `keep_stages` also returns every stage's start, end and
    prediction. Built from `config` alone when Lightning restores it with `load_from_checkpoint` (its checkpoint
    holds every part's weights, the bridge's included)."""

    def __init__(self, config: NamiConfig | dict, parts: Parts | None = None, keep_stages: bool = False):
        super().__init__()
        cfg = config if isinstance(config, NamiConfig) else config_from_dict(config)
        self.cfg, self.keep_stages = cfg, keep_stages
        self.save_hyperparameters({"config": to_dict(cfg), "keep_stages": keep_stages})
        parts = parts if parts is not None else build_parts(cfg, fitted=False)
        self.model = parts.model.eval()
        self.text_encoder = parts.text_encoder.eval()
        self.autoencoder = parts.autoencoder
        self.bridge = parts.bridge.requires_grad_(False)
        self.pipeline = Pipeline.from_config(parts, cfg)
        self.run_dir: Path | None = None

    @classmethod
    def from_checkpoint(cls, cfg: NamiConfig, path: str | Path, keep_stages: bool = False):
        """Trained weights (EMA preferred) and the bridges that belong with them (`nami.parts.trained_parts`)."""
        parts, run_dir = trained_parts(cfg, path)
        module = cls(cfg, parts, keep_stages)
        module.run_dir = run_dir
        return module

    def predict_step(self, batch: dict, batch_idx: int = 0) -> SampleResult:
        return self.pipeline.sample(batch["prompts"], seed=batch["seeds"], keep_stages=self.keep_stages)
