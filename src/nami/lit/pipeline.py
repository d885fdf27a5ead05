"""Prompts -> images with the progressive sampler: the one sampling path of training callbacks, `nami sample`,
the inference module, benchmarks and notebooks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..bridges import BridgeFlow
from ..config import SAMPLER_MODES
from ..flow import PyramidSchedule, SampleTrace, guided, initial_noise, progressive_sample, up, velocity_from_output
from ..models import Autoencoder, NestedMMDiT, TextEmbedding, TextEncoder


@dataclass
class SampleResult:
    """Decoded images in [-1, 1] and, when asked, each stage's start and end (decoded, upsampled to full size)."""

    images: torch.Tensor
    stage_starts: list[torch.Tensor] = field(default_factory=list)
    stage_ends: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Pipeline:
    """The parts sampling needs; `mode` picks progressive, progressive without nesting, or uniform."""

    model: NestedMMDiT
    text_encoder: TextEncoder
    autoencoder: Autoencoder
    bridge: BridgeFlow | None
    schedule: PyramidSchedule
    latent_size: int  # full-stage latent side
    detail_noise: bool = False  # bridge.detail_noise: fresh noise detail after each bridge (flow.bridge_jump)
    prediction: str = "velocity"  # flow.prediction: what the model outputs (flow.velocity_from_output)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompts(self, prompts: list[str]) -> TextEmbedding:
        """Conditional embeddings followed by as many empty-prompt (unconditional) ones."""
        return self.text_encoder(list(prompts) + [""] * len(prompts)).to(self.device)

    def schedule_for(self, mode: str) -> PyramidSchedule:
        """The stages a mode samples over: uniform is one stage over [1000, 0]."""
        return PyramidSchedule.uniform(self.schedule.num_train_timesteps) if mode == "uniform" else self.schedule

    def velocity(self, text: TextEmbedding, mode: str):
        """Batched (conditional; unconditional) velocity for the sampler."""
        schedule = self.schedule_for(mode)
        depth = None if mode == "progressive" else self.model.num_blocks  # None: the model's own nesting

        def batched(z2, t2, k):
            out = self.model(z2, t2, text.states, text.mask, text.pooled, stage=k, depth=depth)
            return velocity_from_output(out, z2, k, t2, schedule, self.prediction).float()

        return batched

    @staticmethod
    def generators(seeds: list[int]) -> list[torch.Generator]:
        """One generator per image, for its stage-0 noise and then its transitions' noise (renoise, detail)."""
        return [torch.Generator().manual_seed(s) for s in seeds]

    def initial_noise(self, generators: list[torch.Generator], num_stages: int) -> torch.Tensor:
        """Stage-0 noise, one generator per image: an image depends on its seed, not on its batch."""
        shape = (1, self.autoencoder.channels, self.latent_size, self.latent_size)
        return torch.cat([initial_noise(shape, num_stages, g) for g in generators]).to(self.device)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        steps: list[int],
        cfg_scale: float,
        seed: int | list[int] = 0,
        mode: str = "progressive",
        keep_stages: bool = False,
        dtype: torch.dtype | None = None,
    ) -> SampleResult:
        """One image per prompt (seed i = seed + i, or the given list). Uniform mode: one stage over
        [1000, 0] with every block and steps[0] steps; no_nesting: every block in every stage."""
        if mode not in SAMPLER_MODES:
            raise ValueError(f"mode must be one of {SAMPLER_MODES}, got {mode!r}")
        schedule = self.schedule_for(mode)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
        generators = self.generators(seeds)
        noise = self.initial_noise(generators, schedule.num_stages)
        text = self.encode_prompts(prompts)
        velocity = guided(self.velocity(text, mode), cfg_scale)
        autocast = torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)
        with autocast:
            trace: SampleTrace = progressive_sample(
                velocity, noise, schedule, steps, self.bridge, generator=generators, keep_stages=keep_stages,
                detail=self.detail_noise,
            )
        result = SampleResult(self.decode(trace.final))
        if keep_stages:
            result.stage_starts = [self.decode(_to_full(z, self.latent_size)) for z in trace.stage_starts]
            result.stage_ends = [self.decode(_to_full(z, self.latent_size)) for z in trace.stage_ends]
        return result

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents.float()).clamp(-1, 1)


def _to_full(z: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-upsample a stage latent to the full latent side (for side-by-side stage views)."""
    while z.shape[-1] < size:
        z = up(z)
    return z
