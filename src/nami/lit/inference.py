"""`ProgressiveInferenceModule`: prompts -> images with trained weights (weights.safetensors, a .ckpt, a run
directory or a model directory written by `nami export`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..config import NamiConfig, config_from_dict, to_dict
from ..parts import Parts, build_parts
from .checkpoint_files import load_weights_into, read_weights
from .pipeline import Pipeline, SampleResult, SamplingOptions
from .precision import autocast_dtype


def trained_parts(cfg: NamiConfig, path: str | Path) -> tuple[Parts, Path]:
    """The parts `cfg` describes holding trained weights (EMA preferred) from `path`, and the bridges that belong
    with them; also the directory the weights came from."""
    weights, run_dir = read_weights(Path(path))
    parts = build_parts(cfg, run_dir)
    for prefix, part in (("model.", parts.model), ("text_encoder.", parts.text_encoder)):
        state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        if not state and prefix == "text_encoder." and not part.trainable:
            continue  # frozen encoders come from their own files, not from training outputs
        load_weights_into(part, state, Path(path), prefix[:-1])
    return parts, run_dir


class ProgressiveInferenceModule(L.LightningModule):
    """predict_step maps {"prompts": [...], "seeds": [...]} to a SampleResult with the configured sampler.

    `sampler.mode` switches between progressive sampling, progressive without nesting and the uniform
    baseline (one stage, every block); `keep_stages` also returns every stage's start, end and prediction.
    Built from `config` alone when Lightning restores it with `load_from_checkpoint` (its checkpoint holds
    every part's weights, the bridge's included).
    """

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
        self.flow = parts.flow
        self.run_dir: Path | None = None

    @classmethod
    def from_checkpoint(cls, cfg: NamiConfig, path: str | Path, keep_stages: bool = False):
        """Load trained weights (EMA preferred) and the bridges that belong with them."""
        parts, run_dir = trained_parts(cfg, path)
        module = cls(cfg, parts, keep_stages)
        module.run_dir = run_dir  # where the weights came from: samples go beside them by default
        return module

    def pipeline(self) -> Pipeline:
        return Pipeline(self.model, self.text_encoder, self.autoencoder, self.flow, self.cfg.latent_size,
                        SamplingOptions.from_config(self.cfg.sampler))  # prompt suffix, negative prompt, precision

    def sampling_dtype(self) -> torch.dtype | None:
        """The autocast dtype trainer.precision asks for on the device the weights are on."""
        return autocast_dtype(self.cfg.trainer.precision, "gpu" if self.device.type == "cuda" else "cpu")

    def predict_step(self, batch: dict, batch_idx: int = 0) -> SampleResult:
        s = self.cfg.sampler
        return self.pipeline().sample(
            batch["prompts"], s.steps_for(), s.guidance, seed=batch["seeds"], mode=s.mode,
            keep_stages=self.keep_stages, dtype=self.sampling_dtype(),
        )  # fmt: skip


def predict(
    module: ProgressiveInferenceModule, prompts: list[str], seed: int = 0, batch_size: int = 16, progress: bool = True
) -> SampleResult:
    """Sample every prompt through Lightning's predict loop (prompt i gets seed + i); results concatenated.

    `progress=False` hides the progress bar, which Lightning draws on stdout (where `--json` output goes).
    """
    batches = [
        {"prompts": prompts[i : i + batch_size], "seeds": list(range(seed + i, seed + min(i + batch_size, len(prompts))))}
        for i in range(0, len(prompts), batch_size)
    ]  # fmt: skip
    t = module.cfg.trainer
    trainer = L.Trainer(accelerator=t.accelerator, devices=1, logger=False, enable_progress_bar=progress and len(batches) > 1,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    results = trainer.predict(module, dataloaders=DataLoader(batches, batch_size=None))

    def joined(field: str) -> list[torch.Tensor]:
        return [torch.cat(parts) for parts in zip(*(getattr(r, field) for r in results))]

    return SampleResult(torch.cat([r.images for r in results]), joined("stage_starts"), joined("stage_ends"),
                        joined("stage_predictions"))  # fmt: skip
