"""Prompts -> images: the one sampling path of training callbacks, `nami sample`, `nami eval`, the benches and
the notebooks. The math is `PyramidFlow.sample`; this adds prompts, seeds, modes, autocast and decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import SAMPLER_MODES
from ..flow import PyramidFlow, SampleTrace, initial_noise, up
from ..models import Autoencoder, NestedMMDiT, TextEmbedding, TextEncoder, model_fn
from ..parts import Parts


@dataclass
class SampleResult:
    """Decoded images in [-1, 1] and, when asked, per stage its start, its end and the clean image predicted
    at its last model call (decoded, enlarged to full size); `trace` keeps the latents at their own sizes."""

    images: torch.Tensor
    stage_starts: list[torch.Tensor] = field(default_factory=list)
    stage_ends: list[torch.Tensor] = field(default_factory=list)
    stage_predictions: list[torch.Tensor] = field(default_factory=list)
    trace: SampleTrace | None = None


class Pipeline:
    """Model, text encoder, autoencoder and flow; `mode` picks progressive, progressive without nesting
    (every block in every stage) or uniform (one stage over the whole path, every block)."""

    def __init__(self, model: NestedMMDiT, text_encoder: TextEncoder, autoencoder: Autoencoder, flow: PyramidFlow,
                 latent_size: int):  # fmt: skip
        self.model, self.text_encoder, self.autoencoder, self.flow = model, text_encoder, autoencoder, flow
        self.latent_size = latent_size  # full-stage latent side

    @classmethod
    def from_parts(cls, parts: Parts, latent_size: int, model=None, text_encoder=None) -> "Pipeline":
        """From built parts; `model` / `text_encoder` stand in for theirs (e.g. the EMA copies)."""
        return cls(model if model is not None else parts.model,
                   text_encoder if text_encoder is not None else parts.text_encoder,
                   parts.autoencoder, parts.flow, latent_size)  # fmt: skip

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompts(self, prompts: list[str], guidance: float) -> TextEmbedding:
        """The prompts' embeddings, followed by as many empty-prompt ones when guidance needs them."""
        prompts = list(prompts) + ([""] * len(prompts) if guidance != 1.0 else [])
        return self.text_encoder(prompts).to(self.device)

    def flow_for(self, mode: str) -> PyramidFlow:
        """The flow a mode samples: uniform is one stage over the whole path."""
        if mode not in SAMPLER_MODES:
            raise ValueError(f"mode must be one of {SAMPLER_MODES}, got {mode!r}")
        return self.flow.uniform() if mode == "uniform" else self.flow

    @staticmethod
    def generators(seeds: list[int]) -> list[torch.Generator]:
        """One generator per image, for its stage-0 noise and then its transitions' noise (renoise, detail)."""
        return [torch.Generator().manual_seed(s) for s in seeds]

    def initial_noise(self, generators: list[torch.Generator], num_stages: int) -> torch.Tensor:
        """Stage-0 noise, one generator per image: an image depends on its seed, not on its batch."""
        shape = (1, self.autoencoder.channels, self.latent_size, self.latent_size)
        return torch.cat([initial_noise(shape, num_stages, g) for g in generators]).to(self.device)

    @torch.no_grad()
    def denoise(
        self,
        text: TextEmbedding,
        generators: list[torch.Generator],
        steps: list[int],
        guidance: float,
        mode: str = "progressive",
        keep_stages: bool = False,
        dtype: torch.dtype | None = None,
    ) -> SampleTrace:
        """Latents from the text embedding (`encode_prompts`) and one generator per image: the timed part of
        sampling (no text encoding, no decoding)."""
        flow = self.flow_for(mode)
        noise = self.initial_noise(generators, flow.num_stages)
        network = model_fn(self.model, nested=mode == "progressive")
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return flow.sample(network, noise, text, steps, guidance, generators, keep_stages)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        steps: list[int],
        guidance: float,
        seed: int | list[int] = 0,
        mode: str = "progressive",
        keep_stages: bool = False,
        dtype: torch.dtype | None = None,
    ) -> SampleResult:
        """One image per prompt (seed i = seed + i, or the given list)."""
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
        text = self.encode_prompts(prompts, guidance)
        trace = self.denoise(text, self.generators(seeds), steps, guidance, mode, keep_stages, dtype)
        result = SampleResult(self.decode(trace.final), trace=trace)
        if keep_stages:
            result.stage_starts = [self.decode(self.full_size(z)) for z in trace.stage_starts]
            result.stage_ends = [self.decode(self.full_size(z)) for z in trace.stage_ends]
            result.stage_predictions = [self.decode(self.full_size(z)) for z in trace.stage_predictions]
        return result

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents.float()).clamp(-1, 1)

    def full_size(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-upsample a stage latent to the full latent side (for side-by-side stage views)."""
        while z.shape[-1] < self.latent_size:
            z = up(z)
        return z
