"""Prompts -> images: the one sampling path of `nami sample`, `nami eval`, the training previews and
evaluations, the benches, `NamiPipeline` and the notebooks. The math is `PyramidFlow.sample`; this adds
prompts, seeds, sampler settings, precision, initial latents and decoding.

`SamplerSettings` resolves what `sampler.*` says once (steps per mode, guidance, mode, prompt suffix,
negative prompt, precision, compile); `Pipeline.from_config(parts, cfg)` builds a pipeline over built parts,
and callers pass prompts, seeds and optional overrides (steps, guidance, mode, initial `latents`, and the image
`height` / `width` in pixels, as diffusers names them: any size on the stage grid, default the square
resolution; `nami.config.buckets`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import SAMPLER_MODES, ConfigError, NamiConfig
from ..config.buckets import check_image_size, grid_step_of
from ..config.validation import MAX_SIDE
from ..flow import PyramidFlow, SampleTrace, initial_noise, noise_down, up
from ..models import Autoencoder, NestedMMDiT, TextEmbedding, TextEncoder, model_fn
from ..parts import Parts
from .precision import sampling_device, sampling_dtypes


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler a config describes, resolved once. `precision` is sampler.precision: auto (autocast as
    `trainer_precision` resolves on the sampling device), fp32, bf16-mixed / fp16-mixed (autocast), or
    bf16-true / fp16-true (weights and activations cast)."""

    steps: tuple[int, ...] = (10, 10, 10)
    uniform_steps: int = 30
    guidance: float = 1.0
    mode: str = "progressive"
    prompt_suffix: str = ""
    negative_prompt: str = ""
    precision: str = "auto"
    trainer_precision: str = "auto"
    compile: bool = False  # torch.compile the network on CUDA (see Pipeline.network)

    @classmethod
    def from_config(cls, cfg: NamiConfig, **overrides) -> "SamplerSettings":
        """From `sampler.*` and `trainer.precision`; keyword arguments replace single settings."""
        s = cfg.sampler
        settings = cls(tuple(s.steps), s.uniform_steps, s.guidance, s.mode, s.prompt_suffix, s.negative_prompt,
                       s.precision, cfg.trainer.precision, s.compile)  # fmt: skip
        return replace(settings, **overrides)

    def steps_for(self, mode: str | None = None) -> list[int]:
        """Euler steps per stage for a mode (default `mode`): uniform is one stage of `uniform_steps`."""
        return [self.uniform_steps] if (mode or self.mode) == "uniform" else list(self.steps)

    @property
    def cast_dtype(self) -> torch.dtype | None:
        """The dtype weights and activations are cast to (the *-true precisions), else None."""
        return sampling_dtypes(self.precision, self.trainer_precision, torch.device("cpu"))[1]

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        return sampling_dtypes(self.precision, self.trainer_precision, device)[0]


@dataclass
class SampleResult:
    """Decoded images in [-1, 1] (N, 3, H, W); `trace`, the latents (the final one and, with keep_stages, each
    stage's start, end and predicted clean latent at its own size); `stages`, with keep_stages, those latents
    decoded and enlarged to full size (`stages.final` is `images`)."""

    images: torch.Tensor
    trace: SampleTrace
    stages: SampleTrace | None = None

    @staticmethod
    def cat(results: list["SampleResult"]) -> "SampleResult":
        """Results of consecutive batches as one."""
        stages = None if results[0].stages is None else _cat_traces([r.stages for r in results])
        return SampleResult(torch.cat([r.images for r in results]), _cat_traces([r.trace for r in results]), stages)


def _cat_traces(traces: list[SampleTrace]) -> SampleTrace:
    def joined(name: str) -> list[torch.Tensor]:
        return [torch.cat(parts) for parts in zip(*(getattr(t, name) for t in traces))]

    return SampleTrace(torch.cat([t.final for t in traces]), *(joined(name) for name in _STAGE_FIELDS))


_STAGE_FIELDS = ("stage_starts", "stage_ends", "stage_predictions")


class Pipeline:
    """Model, text encoder, autoencoder, flow and sampler settings. The mode picks progressive sampling,
    progressive without nesting (every block in every stage) or uniform (one stage over the whole path, every
    block).

    With a *-true precision the pipeline casts the model it is given: hand it a model that only samples, never
    one still training (training previews use `precision="auto"`)."""

    def __init__(self, model: NestedMMDiT, text_encoder: TextEncoder, autoencoder: Autoencoder, flow: PyramidFlow,
                 latent_size: int, settings: SamplerSettings | None = None):  # fmt: skip
        self.model, self.text_encoder, self.autoencoder, self.flow = model, text_encoder, autoencoder, flow
        self.latent_size = latent_size  # full-stage latent side of the square default size
        # pixels an image side must divide by: every stage's grid whole (nami.config.buckets)
        self.grid_step = grid_step_of(autoencoder.downsample, model.patch_size, flow.num_stages)
        self.settings = settings or SamplerSettings(steps=(10,) * flow.num_stages)
        if self.settings.cast_dtype is not None:
            self.model.to(self.settings.cast_dtype)
        self._compiled: torch.nn.Module | None = None
        self.weights_dir = None  # the run or model directory the weights came from (`from_weights`)
        # adapters on the model, by name, with their scales: load_lora's, and those it came with (a LoRA run's own,
        # active at scale 1)
        self.lora_scales: dict[str, float] = {name: 1.0 for name in _adapters_on(model)}
        self._fused: dict[str, torch.Tensor] | None = None  # base weights kept aside while adapters are fused

    @classmethod
    def from_config(cls, parts: Parts, cfg: NamiConfig, model: NestedMMDiT | None = None,
                    text_encoder: TextEncoder | None = None, **settings) -> "Pipeline":  # fmt: skip
        """Over built parts and the config's sampler; `model` / `text_encoder` stand in for the parts' (e.g. EMA
        copies), keyword arguments replace single settings (e.g. `precision="auto"` for training previews)."""
        return cls(model if model is not None else parts.model,
                   text_encoder if text_encoder is not None else parts.text_encoder, parts.autoencoder, parts.flow,
                   cfg.latent_size, SamplerSettings.from_config(cfg, **settings))  # fmt: skip

    @classmethod
    def from_weights(cls, cfg: NamiConfig, path, **settings) -> "Pipeline":
        """Over the weights `path` stands for (a model or run directory, a weights file or a checkpoint; see
        `nami.artifacts.weights`) and the bridge that belongs with them, on the device `trainer.accelerator`
        picks (`sampling_device`). `weights_dir` is the directory the weights came from."""
        from ..artifacts.lora import read_adapter
        from ..artifacts.weights import is_lora_dir
        from ..parts import trained_parts

        if is_lora_dir(path):  # a LoRA run's model directory: its base model, then its adapter
            pipeline = cls.from_weights(cfg, lora_base(cfg, read_adapter(path, "--ckpt")), **settings)
            pipeline.load_lora(path, key="--ckpt")
            pipeline.weights_dir = Path(path)
            return pipeline
        parts, directory = trained_parts(cfg, path)
        pipeline = cls.from_config(parts, cfg, **settings).to(sampling_device(cfg.trainer.accelerator))
        pipeline.weights_dir = directory
        return pipeline

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- LoRA adapters (PEFT, nami.models.lora) ---------------------------------------------------------
    def load_lora(self, directory, scale: float = 1.0, key: str = "--lora") -> str:
        """Add the adapter in `directory` (adapter_model.safetensors + adapter_config.json) to the model, active
        with `scale` beside any loaded before; returns its name. An adapter for another model or other targets
        is one ConfigError line naming `key`."""
        from ..artifacts.lora import read_adapter
        from ..models.lora import AdapterSpec, add_adapter, set_active

        if self._fused is not None:
            raise ConfigError(key, "unfuse_lora() first: adapters are fused into the weights")
        files = read_adapter(directory, key)
        name, i = files.name, 2
        while name in self.lora_scales:
            name, i = f"{files.name}_{i}", i + 1
        add_adapter(self.model, AdapterSpec.from_peft(files.config, self.model), name, files.state, key)
        self.lora_scales[name] = float(scale)
        set_active(self.model, self.lora_scales)
        self._compiled = None  # the graph changed
        return name

    def fuse_lora(self) -> None:
        """Write the loaded adapters into the model's weights (faster sampling; `unfuse_lora` undoes it)."""
        from ..models.lora import fuse

        if self._fused is None and self.lora_scales:
            self._fused = fuse(self.model)
            self._compiled = None

    def unfuse_lora(self) -> None:
        """Restore the weights `fuse_lora` changed, bit for bit."""
        from ..models.lora import unfuse

        if self._fused is not None:
            unfuse(self.model, self._fused)
            self._fused = None
            self._compiled = None

    def to(self, device: str | torch.device) -> "Pipeline":
        """Move the networks (the frozen encoders included) to `device`."""
        for module in (self.model, self.text_encoder, self.autoencoder, self.flow.bridge):
            if isinstance(module, torch.nn.Module):
                module.to(device)
        return self

    def network(self) -> torch.nn.Module:
        """The model as sampling runs it: compiled when `settings.compile` is on and the model is on a CUDA
        device, else the model itself. One compiled graph per stage shape (dynamic=False; the stage index and
        its depth are constants to the compiler), built at the first call of each, so a benchmark's warm-up
        run pays for compiling. On the CPU compiling gains nothing measurable: the switch then warns once and
        samples eagerly, with identical numbers."""
        if not self.settings.compile:
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

    def encode_prompts(self, prompts: list[str], guidance: float | None = None) -> TextEmbedding:
        """The prompts' embeddings (each with the prompt suffix), then as many negative-prompt ones (the empty
        prompt by default) when guidance needs them."""
        s = self.settings
        guidance = s.guidance if guidance is None else guidance
        texts = [p + s.prompt_suffix for p in prompts]
        texts += [s.negative_prompt] * len(prompts) if guidance != 1.0 else []
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

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The full-size latent (height, width) of an image of height x width pixels (None: the square
        resolution); a size off the stage grid is one ConfigError line naming the nearest valid sizes."""
        side = self.latent_size * self.autoencoder.downsample
        height, width = side if height is None else height, side if width is None else width
        check_image_size(height, width, self.grid_step, MAX_SIDE)
        return height // self.autoencoder.downsample, width // self.autoencoder.downsample

    def initial_noise(self, generators: list[torch.Generator], num_stages: int,
                      shape: tuple[int, int] | None = None) -> torch.Tensor:  # fmt: skip
        """Stage-0 noise for a full-size latent of `shape` (default the square's), one generator per image: an
        image depends on its seed, not on its batch."""
        h, w = shape or (self.latent_size, self.latent_size)
        shape = (1, self.autoencoder.channels, h, w)
        return torch.cat([initial_noise(shape, num_stages, g) for g in generators]).to(self.device)

    def start_latents(self, latents: torch.Tensor, num_stages: int,
                      shape: tuple[int, int] | None = None) -> torch.Tensor:  # fmt: skip
        """Given initial latents as stage 0's start: at stage 0's size as they are, at full size (`shape`, default
        the square's) pooled as `initial_noise` pools its draw (diffusers pipelines take full-size `latents=`)."""
        full = tuple(shape or (self.latent_size, self.latent_size))
        stage0 = tuple(s // 2 ** (num_stages - 1) for s in full)
        if latents.ndim != 4 or latents.shape[1] != self.autoencoder.channels:
            raise ConfigError("latents", f"need (batch, {self.autoencoder.channels}, height, width), got "
                                         f"{tuple(latents.shape)}")  # fmt: skip
        if tuple(latents.shape[-2:]) == full:
            for _ in range(num_stages - 1):
                latents = noise_down(latents)
        elif tuple(latents.shape[-2:]) != stage0:
            raise ConfigError("latents", f"size {tuple(latents.shape[-2:])} is neither the full latent size {full} "
                                         f"nor stage 0's {stage0}")  # fmt: skip
        return latents.float().to(self.device)

    @torch.no_grad()
    def denoise(self, text: TextEmbedding, generators: list[torch.Generator], steps: list[int] | None = None,
                guidance: float | None = None, mode: str | None = None, keep_stages: bool = False,
                latents: torch.Tensor | None = None, height: int | None = None,
                width: int | None = None) -> SampleTrace:  # fmt: skip
        """Latents from the text embedding (`encode_prompts`) and one generator per image: the timed part of
        sampling (no text encoding, no decoding), for images of height x width pixels (`latent_shape`).
        `latents` replace the generators' stage-0 noise; the generators still draw the transitions' noise,
        after the stage-0 draw they would have made, so passing the seeds' own noise as `latents` reproduces
        the seeded sample."""
        s = self.settings
        mode = mode or s.mode
        steps = s.steps_for(mode) if steps is None else list(steps)
        guidance = s.guidance if guidance is None else guidance
        flow = self.flow_for(mode)
        shape = self.latent_shape(height, width)
        noise = self.initial_noise(generators, flow.num_stages, shape)  # drawn either way: the transitions' noise
        if latents is not None:  # then comes from the generators as if they had given the start
            noise = self.start_latents(latents, flow.num_stages, shape)
        network = model_fn(self.network(), nested=mode == "progressive")
        text = text.for_attention()  # the one host read of the mask, before the loop
        cast = s.cast_dtype
        if cast is not None:  # the model runs in `cast`; the latents and the Euler steps stay in float32
            text = TextEmbedding(text.states.to(cast), text.mask, text.pooled.to(cast))
            network = _casting(network, cast)
        dtype = s.autocast_dtype(self.device)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return flow.sample(network, noise, text, steps, guidance, generators, keep_stages)

    @torch.no_grad()
    def sample(self, prompts: list[str], steps: list[int] | None = None, guidance: float | None = None,
               seed: int | list[int] = 0, mode: str | None = None, keep_stages: bool = False,
               latents: torch.Tensor | None = None, batch_size: int | None = None,
               progress: bool = False, height: int | None = None, width: int | None = None,
               stop: Callable[[], bool] | None = None) -> SampleResult:  # fmt: skip
        """One image per prompt (seed i = seed + i, or the given list), height x width pixels (default the square
        resolution; any size on the stage grid); `batch_size` splits the prompts into batches (an image depends
        on its seed only, not on its batch), `progress` shows a bar over them. `stop` is asked after each batch:
        when it says True the rest is not sampled, and the result holds the images of the first batches only
        (a stop signal: nami.signals)."""
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts need as many seeds, got {len(seeds)}")
        self.latent_shape(height, width)  # a bad size is one line before any prompt is encoded
        size = batch_size or max(len(prompts), 1)
        results = []
        starts = range(0, len(prompts), size)
        for i in tqdm(starts, desc="sampling", unit="batch", disable=not progress or len(starts) < 2, leave=False):
            chunk = latents[i : i + size] if latents is not None else None
            results.append(self._sample_batch(prompts[i : i + size], seeds[i : i + size], steps, guidance, mode,
                                              keep_stages, chunk, height, width))  # fmt: skip
            if stop is not None and i + size < len(prompts) and stop():
                break
        return SampleResult.cat(results) if len(results) > 1 else results[0]

    def _sample_batch(self, prompts, seeds, steps, guidance, mode, keep_stages, latents, height,
                      width) -> SampleResult:  # fmt: skip
        text = self.encode_prompts(prompts, guidance)
        trace = self.denoise(text, self.generators(seeds), steps, guidance, mode, keep_stages, latents, height,
                             width)  # fmt: skip
        images = self.decode(trace.final)
        if not keep_stages:
            return SampleResult(images, trace)
        full = tuple(trace.final.shape[-2:])
        views = ([self.decode(self.full_size(z, full)) for z in getattr(trace, name)] for name in _STAGE_FIELDS)
        return SampleResult(images, trace, SampleTrace(images, *views))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents.float()).clamp(-1, 1)

    def full_size(self, z: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Nearest-upsample a stage latent to the full latent size `shape` (default the square's) for
        side-by-side stage views."""
        width = shape[-1] if shape is not None else self.latent_size
        while z.shape[-1] < width:
            z = up(z)
        return z


def lora_base(cfg: NamiConfig, adapter) -> Path:
    """The base model directory an adapter names, checked to hold a model of `cfg`'s shape (the adapter's
    config may differ from the base's in its finetune block only)."""
    from ..artifacts.layout import first_difference
    from ..artifacts.model_dir import config_for_weights
    from ..config import to_dict

    if not adapter.base or not Path(adapter.base).exists():
        raise ConfigError("--ckpt", f"the adapter in {adapter.directory} was trained on {adapter.base!r}, which is "
                                    "not here: sample it with --ckpt BASE --lora DIR")  # fmt: skip
    own, base = to_dict(cfg), to_dict(config_for_weights(adapter.base))
    base["finetune"] = own["finetune"]
    difference = first_difference(base, own)
    if difference is not None:
        name, theirs, ours = difference
        raise ConfigError("--ckpt", f"the adapter's base {adapter.base} has {name}={theirs!r}, the adapter was "
                                    f"trained with {ours!r}")  # fmt: skip
    return Path(adapter.base)


def _adapters_on(model: torch.nn.Module) -> list[str]:
    """The names of the LoRA adapters `model` holds (PEFT is imported only when it holds some)."""
    if not any(".lora_A" in name for name, _ in model.named_modules()):
        return []
    from ..models.lora import adapter_names

    return adapter_names(model)


def _casting(network, dtype: torch.dtype):
    """The network fed latents in `dtype`, its output returned in float32."""

    def call(z, model_time, k, text):
        return network(z.to(dtype), model_time, k, text).float()

    return call
