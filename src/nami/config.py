"""Structured configs for the kit: dataclasses, YAML composition with `base:`, dotlist overrides, validation.

A config file is data: it names components by registry key and sets numbers. `load(path, overrides)` merges
the dataclass defaults, the chain of `base:` files, the file itself and the overrides (in that order), then
validates the result before any compute. Every failure raises `ConfigError` with the dotted key it is about;
the CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .flow.prediction import PREDICTIONS


class ConfigError(ValueError):
    """A bad config value or input path; `key` names the config key (or file) at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass
class ModelConfig:
    """Nested MM-DiT shape. `stage_depths` are cumulative block counts over [double..., single...]."""

    double_blocks: int = 2
    single_blocks: int = 4
    width: int = 128
    heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 4
    stage_depths: list[int] = field(default_factory=lambda: [2, 4, 6])
    rope_theta: float = 10000.0
    qk_norm: bool = True
    nesting: bool = True  # False: every stage runs every block (the no-nesting ablation)


@dataclass
class TextEncoderConfig:
    """Text conditioning. kind: learned (byte tokens, trained), minilm (offline MiniLM), hf (local/hub path)."""

    kind: str = "learned"
    dim: int = 64  # width of the token states handed to the model
    pooled_dim: int = 64  # width of the pooled vector
    max_length: int = 32  # tokens per caption (bytes for `learned`)
    path: str | None = None  # hf: token-state encoder (T5 / mT5 / BERT / CLIP), local path or hub id
    pooled_path: str | None = None  # hf: separate pooled encoder (CLIP); None pools the states encoder
    dtype: str = "float32"  # dtype the frozen encoders run in (bfloat16 for big ones)
    cache_size: int = 0  # frozen encoders: keep the embeddings of this many recent captions (0: off)


@dataclass
class AutoencoderConfig:
    """Image <-> model space. kind: pixel (identity) or diffusers_kl (AutoencoderKL from `path`)."""

    kind: str = "pixel"
    channels: int = 3  # latent channels (3 for pixels, 16 for the FLUX / SD3 VAE)
    downsample: int = 1  # pixels per latent cell (8 for the FLUX / SD3 VAE)
    path: str | None = None
    scaling_factor: float | None = None  # None: read from the VAE's own config
    shift_factor: float | None = None


@dataclass
class RatioPhase:
    """One phase of the stage-ratio schedule: `ratios` apply from step `start_step` on."""

    start_step: int = 0
    ratios: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])


@dataclass
class FlowConfig:
    """The pyramid schedule (DESIGN section 3)."""

    stage_range: list[float] = field(default_factory=lambda: [0.0, 1 / 3, 2 / 3, 1.0])
    gamma: float = 1 / 3  # Pyramid Flow's corrected-start / block-noise parameter, 0 < gamma <= 1/3
    sigma_grid: int = 1000  # stage boundaries snap to this grid as in the official code; 0 = exact
    num_train_timesteps: int = 1000  # model time T runs over [0, num_train_timesteps]
    timestep_density: str = "logit_normal"  # in-window sigma' density: logit_normal | uniform
    logit_mean: float = 0.0
    logit_std: float = 1.0
    stage_ratios: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    ratio_schedule: list[RatioPhase] = field(default_factory=list)  # empty: stage_ratios throughout
    caption_dropout: float = 0.1
    prediction: str = "velocity"  # network output: velocity | data (x-prediction, same velocity loss; flow.prediction)


@dataclass
class BridgeConfig:
    """BridgeFlow between stages: kind from the bridges registry, and how it is fitted."""

    kind: str = "conv1x1"  # scalar_bias | conv1x1 | mlp | cnn | identity | renoise
    weights: str | None = None  # bridges.safetensors to load
    solver: str = "closed_form"  # closed_form (linear kinds) | sgd
    fit_batches: int = 20
    heldout_batches: int = 4
    hidden: int = 64  # mlp / cnn width
    lr: float = 1e-3
    sgd_steps: int = 2000
    ridge: float = 0.0  # Tikhonov term for the closed-form solve (0 = plain least squares)
    # Add e_(k-1) x (eps - Up(Down(eps))) after the bridge, in training and sampling: the full-resolution noise
    # detail a deterministic Up-based jump cannot carry (see flow.bridge_jump). Off: DESIGN's deterministic jump.
    detail_noise: bool = False


@dataclass
class SamplerConfig:
    """Progressive Euler sampling with classifier-free guidance."""

    steps: list[int] = field(default_factory=lambda: [10, 10, 10])
    uniform_steps: int = 30  # the single-stage baseline the speed ratio is measured against
    cfg: float = 4.0
    mode: str = "progressive"  # progressive | no_nesting | uniform (one stage over [1000, 0], all blocks)


@dataclass
class DataConfig:
    """Streaming shards (webdataset tars or parquet), see DESIGN section 5 and data_modules/."""

    # A path, glob, brace range ({00000..00009}), directory or fsspec URL, or a list of them. Typed Any so
    # that the override `data.shards=/path/*.tar` (one string) is accepted as well as a list.
    shards: Any = field(default_factory=list)
    format: str = "auto"  # auto (from the file name) | webdataset | parquet
    num_workers: int = 2  # dataloader workers per rank
    batch_size: int = 16  # samples per rank and batch, split across stages by the stage ratios
    key_column: str = "key"  # parquet: the sample key (a row without one is "<file>:<row>")
    caption_column: str = "caption"  # parquet: the caption (tars: .txt, else json["caption"])
    image_column: str = "image"  # parquet: image bytes, or a {"bytes", "path"} struct
    min_size: int = 0  # skip images whose shorter side is below this (0: keep all)
    max_pixels: int = 64_000_000  # skip images with more pixels (decompression bombs), before decoding
    shuffle_buffer: int = 1000  # 0: no shuffle; n: shard order per epoch + seeded shuffle of n-record blocks


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    schedule: str = "constant"  # after warmup: constant | cosine (to 0 at trainer.max_steps)
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class TrainerConfig:
    default_root_dir: str = "runs"
    max_steps: int = 1000
    max_time: str | None = None  # also stop after this wall time, "DD:HH:MM:SS" (e.g. the demo's budget)
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (FSDP2 through ModelParallelStrategy)
    precision: str = "auto"  # auto (bf16-mixed where matmuls have native bf16, else 32-true) or a Lightning value
    checkpoint_every: int = 500
    log_every_n_steps: int = 10
    resume: str | None = None  # "last" or a checkpoint path
    keep_checkpoints: int = 3  # newest step checkpoints kept (plus last.ckpt)
    activation_checkpointing: bool = False  # fsdp: recompute each block's activations in backward
    skip_nonfinite: bool = False  # a non-finite loss or gradient: skip the step (True) or stop (False)
    deterministic: bool = False  # torch deterministic algorithms (exact resume on GPU; slower)


@dataclass
class LogConfig:
    """What the training run writes besides losses (TensorBoard under runs/<name>/)."""

    sample_every: int = 0  # steps between sample grids (0: only at the end)
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a red circle", "two blue squares", "a green triangle left of a yellow circle"]
    )
    sample_seed: int = 0
    record_keys: bool = False  # write every step's sample keys to keys-rank<r>.jsonl (audits, resume tests)


@dataclass
class EvalConfig:
    """`nami eval`: the GenEval-Shapes prompt set, and local weights for FID / CLIPScore (skipped when None)."""

    per_category: int = 50  # prompts per GenEval category (six categories)
    seed: int = 1000  # prompt-set seed, apart from the training data's default 0
    batch_size: int = 32  # images per sampling / feature batch
    fid_weights: str | None = None  # InceptionV3 (torchvision layout) or timm weights file, see nami.eval.metrics
    clip_path: str | None = None  # local CLIPModel + CLIPProcessor directory


@dataclass
class NamiConfig:
    """The whole experiment. `resolution` is the full-stage image size in pixels."""

    name: str = "nami"
    seed: int = 0
    resolution: int = 32
    model: ModelConfig = field(default_factory=ModelConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def num_stages(self) -> int:
        return len(self.flow.stage_range) - 1

    @property
    def latent_size(self) -> int:
        """Full-stage latent side (pixels / autoencoder downsample)."""
        return self.resolution // self.autoencoder.downsample

    def stage_latent_sizes(self) -> list[int]:
        """Latent side of each stage, coarsest first."""
        k = self.num_stages
        return [self.latent_size // 2 ** (k - 1 - s) for s in range(k)]


# Registry keys the validator accepts; the registries themselves live with their components.
TEXT_ENCODER_KINDS = ("learned", "minilm", "hf")
AUTOENCODER_KINDS = ("pixel", "diffusers_kl")
BRIDGE_KINDS = ("scalar_bias", "conv1x1", "mlp", "cnn", "identity", "renoise")
BRIDGE_SOLVERS = ("closed_form", "sgd")
TIMESTEP_DENSITIES = ("logit_normal", "uniform")
LR_SCHEDULES = ("constant", "cosine")
DATA_FORMATS = ("auto", "webdataset", "parquet")
STRATEGIES = ("auto", "ddp", "fsdp")
SAMPLER_MODES = ("progressive", "no_nesting", "uniform")


def _read_yaml(path: Path, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(key, f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping")
    return data


def _compose(path: Path, key: str = "config", seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read `path` and, first, the chain of files named by its `base:` (relative to the file)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError("base", f"cycle through {path}")
    data = _read_yaml(path, key)
    base = data.pop("base", None)
    layers = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError("base", f"must be a file name, got {base!r} in {path}")
        layers.append(_compose(path.parent / base, "base", seen + (path,)))
    layers.append(OmegaConf.create(data))
    return OmegaConf.merge(*layers) if len(layers) > 1 else layers[0]


def _omegaconf_error(err: OmegaConfBaseException) -> ConfigError:
    key = getattr(err, "full_key", None) or "config"
    message = str(getattr(err, "msg", err)).splitlines()[0]
    if type(err).__name__ == "ConfigKeyError":
        message = f"unknown key ({message})"
    return ConfigError(key, message)


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> NamiConfig:
    """Compose defaults <- base chain <- file <- overrides, validate, and return a `NamiConfig`."""
    schema = OmegaConf.structured(NamiConfig)
    layers = [schema]
    if path is not None:
        layers.append(_compose(Path(path)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like key=value")
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err) from None
    validate(cfg)
    return cfg


def to_dict(cfg: NamiConfig) -> dict[str, Any]:
    """Plain-dict view (for hparams, logs and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def validate(cfg: NamiConfig) -> None:
    """Cross-field checks that the schema alone cannot express. Raises ConfigError naming the key."""
    m, f = cfg.model, cfg.flow
    r = f.stage_range
    if len(r) < 2 or r[0] != 0.0 or r[-1] != 1.0 or any(b <= a for a, b in zip(r, r[1:])):
        raise ConfigError("flow.stage_range", f"must increase strictly from 0 to 1, got {r}")
    k = cfg.num_stages
    if not 0.0 < f.gamma <= 1 / 3 + 1e-9:
        raise ConfigError("flow.gamma", f"must lie in (0, 1/3] (block-noise covariance), got {f.gamma}")
    if f.sigma_grid < 0:
        raise ConfigError("flow.sigma_grid", f"must be >= 0, got {f.sigma_grid}")
    if f.sigma_grid:
        snapped = [math.floor(x * f.sigma_grid + 1e-9) for x in r]
        if any(b <= a for a, b in zip(snapped, snapped[1:])):
            raise ConfigError("flow.stage_range", f"two boundaries fall on one point of the {f.sigma_grid} grid")
    _check_choice("flow.timestep_density", f.timestep_density, TIMESTEP_DENSITIES)
    _check_choice("flow.prediction", f.prediction, PREDICTIONS)
    _check_choice("optim.schedule", cfg.optim.schedule, LR_SCHEDULES)
    if f.logit_std <= 0:
        raise ConfigError("flow.logit_std", f"must be > 0, got {f.logit_std}")
    if not 0.0 <= f.caption_dropout < 1.0:
        raise ConfigError("flow.caption_dropout", f"must lie in [0, 1), got {f.caption_dropout}")
    _check_ratios("flow.stage_ratios", f.stage_ratios, k)
    last = -1
    for i, phase in enumerate(f.ratio_schedule):
        if phase.start_step <= last:
            raise ConfigError(f"flow.ratio_schedule[{i}].start_step", "phases must start at increasing steps")
        last = phase.start_step
        _check_ratios(f"flow.ratio_schedule[{i}].ratios", phase.ratios, k)

    total = m.double_blocks + m.single_blocks
    d = m.stage_depths
    if len(d) != k:
        raise ConfigError("model.stage_depths", f"has {len(d)} entries but flow.stage_range defines {k} stages")
    if any(b <= a for a, b in zip(d, d[1:])) or d[0] < 1:
        raise ConfigError("model.stage_depths", f"must be positive and strictly increasing, got {d}")
    if d[-1] != total:
        raise ConfigError(
            "model.stage_depths", f"must end at the total block count {total} (double + single), got {d[-1]}"
        )
    if m.width % m.heads:
        raise ConfigError("model.width", f"{m.width} is not divisible by model.heads={m.heads}")
    if (m.width // m.heads) % 4:
        raise ConfigError("model.heads", "head width must be divisible by 4 (2D RoPE splits it in rotary pairs)")
    for key, value in (("model.double_blocks", m.double_blocks), ("model.single_blocks", m.single_blocks)):
        if value < 0:
            raise ConfigError(key, f"must be >= 0, got {value}")
    if m.patch_size < 1:
        raise ConfigError("model.patch_size", f"must be >= 1, got {m.patch_size}")

    ae = cfg.autoencoder
    _check_choice("autoencoder.kind", ae.kind, AUTOENCODER_KINDS)
    if ae.downsample < 1:
        raise ConfigError("autoencoder.downsample", f"must be >= 1, got {ae.downsample}")
    step = ae.downsample * m.patch_size * 2 ** (k - 1)
    if cfg.resolution <= 0 or cfg.resolution % step:
        raise ConfigError(
            "resolution",
            f"{cfg.resolution} must be divisible by autoencoder.downsample x model.patch_size x 2^(stages-1) = {step}",
        )

    te = cfg.text_encoder
    _check_choice("text_encoder.kind", te.kind, TEXT_ENCODER_KINDS)
    if te.kind == "hf" and not te.path:
        raise ConfigError("text_encoder.path", "the hf text encoder needs a local path or hub id")
    if ae.kind == "diffusers_kl" and not ae.path:
        raise ConfigError("autoencoder.path", "the diffusers_kl autoencoder needs a local path or hub id")

    b = cfg.bridge
    _check_choice("bridge.kind", b.kind, BRIDGE_KINDS)
    _check_choice("bridge.solver", b.solver, BRIDGE_SOLVERS)
    if b.solver == "closed_form" and b.kind in ("mlp", "cnn"):
        raise ConfigError("bridge.solver", f"bridge.kind={b.kind} has no closed form; use bridge.solver=sgd")

    s = cfg.sampler
    if len(s.steps) != k or any(n < 1 for n in s.steps):
        raise ConfigError("sampler.steps", f"needs one positive step count per stage ({k}), got {s.steps}")
    if s.uniform_steps < 1:
        raise ConfigError("sampler.uniform_steps", f"must be >= 1, got {s.uniform_steps}")
    _check_choice("sampler.mode", s.mode, SAMPLER_MODES)

    _check_data(cfg.data)
    _check_choice("trainer.strategy", cfg.trainer.strategy, STRATEGIES)
    for key in ("max_steps", "checkpoint_every", "log_every_n_steps", "devices", "num_nodes", "keep_checkpoints"):
        if getattr(cfg.trainer, key) < 1:
            raise ConfigError(f"trainer.{key}", f"must be >= 1, got {getattr(cfg.trainer, key)}")


def _check_data(d: DataConfig) -> None:
    shards = [d.shards] if isinstance(d.shards, str) else d.shards
    if not isinstance(shards, list) or not all(isinstance(p, str) and p for p in shards):
        raise ConfigError("data.shards", f"must be a path, glob or URL, or a list of them; got {d.shards!r}")
    _check_choice("data.format", d.format, DATA_FORMATS)
    for key in ("num_workers", "min_size", "shuffle_buffer"):
        if getattr(d, key) < 0:
            raise ConfigError(f"data.{key}", f"must be >= 0, got {getattr(d, key)}")
    for key in ("batch_size", "max_pixels"):
        if getattr(d, key) < 1:
            raise ConfigError(f"data.{key}", f"must be >= 1, got {getattr(d, key)}")
    for key in ("key_column", "caption_column", "image_column"):
        if not getattr(d, key):
            raise ConfigError(f"data.{key}", "must be a column name")


def _check_ratios(key: str, ratios: list[float], stages: int) -> None:
    if len(ratios) != stages:
        raise ConfigError(key, f"needs one ratio per stage ({stages}), got {ratios}")
    if any(x < 0 for x in ratios) or sum(ratios) <= 0:
        raise ConfigError(key, f"ratios must be >= 0 with a positive sum, got {ratios}")
