"""Prompts -> images: the one sampling path of training callbacks, `nami sample`, `nami eval`, the benches and
the notebooks. The math is `PyramidFlow.sample`; this adds prompts, seeds, modes, precision and decoding.

`SamplingOptions` carries what `sampler.*` says about prompts and precision (the released NAMI-2B appends a
suffix to every prompt, guides against a negative prompt and runs in fp16); the default options are the plain
behaviour (no suffix, the empty prompt as the unconditional input, the caller's autocast dtype)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from ..config import SAMPLER_MODES, SamplerConfig
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


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SamplingOptions:
    """Prompt suffix, negative prompt (the unconditional branch of guidance) and precision for sampling:
    auto (the dtype the caller passes, from trainer.precision), fp32, bf16-mixed / fp16-mixed (autocast), or
    bf16-true / fp16-true (weights and activations cast)."""

    prompt_suffix: str = ""
    negative_prompt: str = ""
    precision: str = "auto"
    compile: bool = False  # torch.compile the network on CUDA (see Pipeline.network)

    @classmethod
    def from_config(cls, sampler: SamplerConfig) -> "SamplingOptions":
        return cls(sampler.prompt_suffix, sampler.negative_prompt, sampler.precision, sampler.compile)

    @property
    def cast_dtype(self) -> torch.dtype | None:
        """The dtype weights and activations are cast to (the *-true precisions), else None."""
        kind, _, mode = self.precision.partition("-")
        return PRECISION_DTYPES[kind] if mode == "true" else None

    def autocast_dtype(self, default: torch.dtype | None) -> torch.dtype | None:
        """The autocast dtype for sampling: `default` (the caller's) under auto, else the configured one."""
        if self.precision == "auto":
            return default
        kind, _, mode = self.precision.partition("-")
        return PRECISION_DTYPES[kind] if mode == "mixed" else None


class Pipeline:
    """Model, text encoder, autoencoder and flow; `mode` picks progressive, progressive without nesting
    (every block in every stage) or uniform (one stage over the whole path, every block).

    With a *-true precision in `options` the pipeline casts the model it is given: hand it a model that only
    samples (the inference module's), never one still training."""

    def __init__(self, model: NestedMMDiT, text_encoder: TextEncoder, autoencoder: Autoencoder, flow: PyramidFlow,
                 latent_size: int, options: SamplingOptions | None = None):  # fmt: skip
        self.model, self.text_encoder, self.autoencoder, self.flow = model, text_encoder, autoencoder, flow
        self.latent_size = latent_size  # full-stage latent side
        self.options = options or SamplingOptions()
        if self.options.cast_dtype is not None:
            self.model.to(self.options.cast_dtype)
        self._compiled: torch.nn.Module | None = None

    @classmethod
    def from_parts(cls, parts: Parts, latent_size: int, model=None, text_encoder=None,
                   options: SamplingOptions | None = None) -> "Pipeline":  # fmt: skip
        """From built parts; `model` / `text_encoder` stand in for theirs (e.g. the EMA copies)."""
        return cls(model if model is not None else parts.model,
                   text_encoder if text_encoder is not None else parts.text_encoder,
                   parts.autoencoder, parts.flow, latent_size, options)  # fmt: skip

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def network(self) -> torch.nn.Module:
        """The model as sampling runs it: compiled when `options.compile` is on and the model is on a CUDA
        device, else the model itself. One compiled graph per stage shape (dynamic=False; the stage index and
        its depth are constants to the compiler), built at the first call of each, so a benchmark's warm-up
        run pays for compiling. On the CPU compiling gains nothing measurable (DESIGN's machine notes): the
        switch then warns once and samples eagerly, with identical numbers."""
        if not self.options.compile:
            return self.model
        if self.device.type != "cuda":
            if self._compiled is None:
                warnings.warn("sampler.compile is on but the model is not on a CUDA device: sampling eagerly",
                              stacklevel=3)  # fmt: skip
                self._compiled = self.model
            return self._compiled
        if self._compiled is None:
            self._compiled = torch.compile(self.model, dynamic=False)
        return self._compiled

    def encode_prompts(self, prompts: list[str], guidance: float) -> TextEmbedding:
        """The prompts' embeddings (each with the prompt suffix), then as many negative-prompt ones (the empty
        prompt by default) when guidance needs them."""
        o = self.options
        texts = [p + o.prompt_suffix for p in prompts]
        texts += [o.negative_prompt] * len(prompts) if guidance != 1.0 else []
        return self.text_encoder(texts).to(self.device)

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
        network = model_fn(self.network(), nested=mode == "progressive")
        text = text.for_attention()  # the one host read of the mask, before the loop
        cast = self.options.cast_dtype
        if cast is not None:  # the model runs in `cast`; the latents and the Euler steps stay in float32
            text = TextEmbedding(text.states.to(cast), text.mask, text.pooled.to(cast))
            network = _casting(network, cast)
        dtype = self.options.autocast_dtype(dtype)
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


def _casting(network, dtype: torch.dtype):
    """The network fed latents in `dtype`, its output returned in float32."""

    def call(z, model_time, k, text):
        return network(z.to(dtype), model_time, k, text).float()

    return call
