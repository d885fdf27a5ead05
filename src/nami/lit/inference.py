"""`ProgressiveInferenceModule`: prompts -> images with trained weights (weights.safetensors or a .ckpt)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ..config import ConfigError, NamiConfig
from ..parts import Parts, build_parts
from .pipeline import Pipeline, SampleResult
from .precision import autocast_dtype


class ProgressiveInferenceModule(L.LightningModule):
    """predict_step maps {"prompts": [...], "seeds": [...]} to a SampleResult with the configured sampler.

    `sampler.mode` switches between progressive sampling, progressive without nesting and the uniform
    baseline (one stage, every block); `keep_stages` also returns every stage's start, end and prediction.
    """

    def __init__(self, cfg: NamiConfig, parts: Parts, keep_stages: bool = False):
        super().__init__()
        self.cfg, self.keep_stages = cfg, keep_stages
        self.model = parts.model.eval()
        self.text_encoder = parts.text_encoder.eval()
        self.autoencoder = parts.autoencoder
        self.bridge = parts.bridge.requires_grad_(False)
        self.flow = parts.flow

    @classmethod
    def from_checkpoint(cls, cfg: NamiConfig, path: str | Path, keep_stages: bool = False):
        """Load trained weights (EMA preferred) and the bridges that belong with them."""
        weights, run_dir = read_weights(Path(path))
        parts = build_parts(cfg, run_dir)
        for prefix, part in (("model.", parts.model), ("text_encoder.", parts.text_encoder)):
            state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            if not state and prefix == "text_encoder." and not part.trainable:
                continue  # frozen encoders come from their own files, not from training outputs
            missing, unexpected = part.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ConfigError("--ckpt", f"{path} does not fit this config's {prefix[:-1]} "
                                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")  # fmt: skip
        return cls(cfg, parts, keep_stages)

    def pipeline(self) -> Pipeline:
        return Pipeline(self.model, self.text_encoder, self.autoencoder, self.flow, self.cfg.latent_size)

    def predict_step(self, batch: dict, batch_idx: int = 0) -> SampleResult:
        s, t = self.cfg.sampler, self.cfg.trainer
        return self.pipeline().sample(
            batch["prompts"], s.steps_for(), s.guidance, seed=batch["seeds"], mode=s.mode,
            keep_stages=self.keep_stages, dtype=autocast_dtype(t.precision, t.accelerator),
        )  # fmt: skip


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """(flat state dict, run directory) from a run directory, weights.safetensors, a .ckpt file or a
    distributed (FSDP) .ckpt directory. Lightning checkpoints give their EMA weights."""
    if path.is_dir() and not (path / ".metadata").exists():  # a run directory
        if (path / "weights.safetensors").is_file():
            return read_weights(path / "weights.safetensors")
        steps = sorted((path / "checkpoints").glob("step*.ckpt"))
        if not steps:
            raise ConfigError("--ckpt", f"{path} holds neither weights.safetensors nor checkpoints/step*.ckpt")
        return read_weights(steps[-1])
    if not path.exists():
        raise ConfigError("--ckpt", f"not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path)), path.parent
    if path.is_dir():  # torch.distributed.checkpoint directory written by FSDP2 runs
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(str(path), f"{tmp}/full.pt")
            state = torch.load(f"{tmp}/full.pt", weights_only=True, map_location="cpu")["state_dict"]
    else:
        state = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    if any(k.startswith("ema.") for k in state):
        weights = {k[len("ema.") :]: v for k, v in state.items() if k.startswith("ema.")}
    else:
        weights = {k: v for k, v in state.items() if k.startswith(("model.", "text_encoder."))}
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return weights, run_dir


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
