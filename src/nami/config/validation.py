"""Cross-field checks that the schema alone cannot express; every failure names its key (`ConfigError`)."""

from __future__ import annotations

import math

from .. import registry
from ..errors import ConfigError
from .buckets import check_buckets, check_eval_size, grid_step
from .schema import DataConfig, NamiConfig

# Choices that belong to the config itself; component names come from `nami.registry`.
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")
BASE_DTYPES = ("float32", "bfloat16")
TEXT_POOLINGS = ("auto", "first", "mean")
SAMPLER_PRECISIONS = ("auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true", "fp16-true")
RUN_DIR_POLICIES = ("error", "new", "overwrite")
STRATEGIES = ("auto", "ddp", "fsdp")
SAMPLER_MODES = ("progressive", "no_nesting", "uniform")
BRIDGE_SOLVERS = ("closed_form", "sgd")
PROMPT_SETS = ("standard", "large")  # GenEval-Shapes prompt sets (sizes in nami.eval.geneval)
EVAL_KINDS = ("shapes", "prompts")  # what the evaluation during training samples (nami.eval.sets)


def check_built(section: str, kind: str, pairs: dict[str, tuple[int, int]]) -> None:
    """A built component must have the sizes the config promised: pairs maps a key of `section` to
    (configured, built); the first mismatch is a ConfigError naming `section.key`."""
    for key, (want, got) in pairs.items():
        if want != got:
            raise ConfigError(f"{section}.{key}", f"is {want} but the {kind} {section.replace('_', ' ')} gives {got}")


def _check_registered(reg: registry.Registry, value: str) -> None:
    _check_choice(reg.key, value, reg.names())


def _check_component(reg: registry.Registry, kind: str, params: dict) -> None:
    """A registered kind and its parameter block, as the kind itself parses and validates it."""
    _check_registered(reg, kind)
    reg.params(kind, params)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"unknown value {value!r}; choose one of {', '.join(choices)}")


# Sane ranges: a value outside them is a typo or a hostile file, refused before anything is built or allocated
# (a width of 10^9 would ask for exabytes; 10^9 sampler steps would run for ever).
MAX_SIDE = 16_384  # pixels of the full resolution
MAX_WIDTH = 65_536  # model width, text states, pooled vector
MAX_BLOCKS = 1_024
MAX_TOKENS = 65_536  # text tokens per caption
MAX_STEPS_PER_STAGE = 10_000
MAX_SEED = 2**63 - 1  # what torch generators take
MAX_PROMPTS_PER_CATEGORY = 100_000


def _check_range(key: str, value, low, high=None, low_open: bool = False) -> None:
    """low <= value <= high (low < value with `low_open`), value a finite number; else one line naming `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ConfigError(key, f"must lie in {bound.replace(', None]', ', inf)')}, got {value}")


def check_ranges(cfg: NamiConfig) -> None:
    """Every number in its sane range and the run name a plain name (checked first: later checks divide by
    heads, count blocks, ...)."""
    if not cfg.name or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\\0"):
        raise ConfigError("name", f"must be a plain directory name (no path separators), got {cfg.name!r}")
    _check_range("seed", cfg.seed, 0, MAX_SEED)
    _check_range("resolution", cfg.resolution, 1, MAX_SIDE)
    m, te, ae, o = cfg.model, cfg.text_encoder, cfg.autoencoder, cfg.optim
    _check_range("model.width", m.width, 1, MAX_WIDTH)
    _check_range("model.heads", m.heads, 1, m.width)
    _check_range("model.double_blocks", m.double_blocks, 0, MAX_BLOCKS)
    _check_range("model.single_blocks", m.single_blocks, 0, MAX_BLOCKS - m.double_blocks)
    _check_range("model.mlp_ratio", m.mlp_ratio, 0, 64, low_open=True)
    _check_range("model.patch_size", m.patch_size, 1, 64)
    _check_range("model.rope_theta", m.rope_theta, 0, low_open=True)
    _check_range("text_encoder.dim", te.dim, 1, MAX_WIDTH)
    _check_range("text_encoder.pooled_dim", te.pooled_dim, 1, MAX_WIDTH)
    _check_range("text_encoder.max_length", te.max_length, 1, MAX_TOKENS)
    if te.pooled_max_length is not None:
        _check_range("text_encoder.pooled_max_length", te.pooled_max_length, 1, MAX_TOKENS)
    _check_range("autoencoder.channels", ae.channels, 1, 1024)
    _check_range("autoencoder.downsample", ae.downsample, 1, 64)
    _check_range("optim.lr", o.lr, 0, low_open=True)
    _check_range("optim.weight_decay", o.weight_decay, 0)
    for i, beta in enumerate(o.betas):
        _check_range(f"optim.betas[{i}]", beta, 0, 1)
    _check_range("optim.warmup_steps", o.warmup_steps, 0)
    _check_range("optim.grad_clip", o.grad_clip, 0)
    _check_range("optim.ema_decay", o.ema_decay, 0, 1)
    for i, steps in enumerate(cfg.sampler.steps):
        _check_range(f"sampler.steps[{i}]", steps, 1, MAX_STEPS_PER_STAGE)
    _check_range("sampler.uniform_steps", cfg.sampler.uniform_steps, 1, MAX_STEPS_PER_STAGE)
    _check_range("eval.per_category", cfg.eval.per_category, 1, MAX_PROMPTS_PER_CATEGORY)
    _check_range("eval.train_per_category", cfg.eval.train_per_category, 1, MAX_PROMPTS_PER_CATEGORY)
    _check_range("eval.batch_size", cfg.eval.batch_size, 1, 4096)
    _check_range("data.batch_size", cfg.data.batch_size, 1, 1 << 20)


def validate(cfg: NamiConfig) -> None:
    """Cross-field checks that the schema alone cannot express. Raises ConfigError naming the key."""
    check_ranges(cfg)
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
    _check_component(registry.TIMESTEP_DENSITIES, f.timestep_density, f.density_params)
    _check_component(registry.PREDICTIONS, f.prediction, f.prediction_params)
    _check_choice("optim.schedule", cfg.optim.schedule, LR_SCHEDULES)
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
    head = m.width // m.heads
    if m.rope_axes is not None and (len(m.rope_axes) != 3 or sum(m.rope_axes) != head
                                    or any(a < 0 or a % 2 for a in m.rope_axes)):  # fmt: skip
        raise ConfigError("model.rope_axes", f"needs three even dims (ids 0, row, col) summing to the head width "
                                             f"{head}, got {m.rope_axes}")  # fmt: skip

    ae = cfg.autoencoder
    _check_registered(registry.AUTOENCODERS, ae.kind)
    if ae.downsample < 1:
        raise ConfigError("autoencoder.downsample", f"must be >= 1, got {ae.downsample}")
    step = grid_step(cfg)
    if cfg.resolution <= 0 or cfg.resolution % step:
        raise ConfigError(
            "resolution",
            f"{cfg.resolution} must be divisible by autoencoder.downsample x model.patch_size x 2^(stages-1) = {step}",
        )

    te = cfg.text_encoder
    _check_registered(registry.TEXT_ENCODERS, te.kind)
    if te.kind == "hf" and not te.path:
        raise ConfigError("text_encoder.path", "the hf text encoder needs a local path or hub id")
    _check_choice("text_encoder.pooling", te.pooling, TEXT_POOLINGS)
    if te.pooled_max_length is not None and te.pooled_max_length < 1:
        raise ConfigError("text_encoder.pooled_max_length", f"must be >= 1, got {te.pooled_max_length}")
    if cfg.data.precomputed and te.kind == "learned":  # the one kind that trains with the model
        raise ConfigError("text_encoder.kind", "learned trains with the model, so data.precomputed=true cannot use "
                                               "stored text states; use a frozen encoder (minilm, hf)")  # fmt: skip
    if ae.kind == "diffusers_kl" and not ae.path:
        raise ConfigError("autoencoder.path", "the diffusers_kl autoencoder needs a local path or hub id")

    b = cfg.bridge
    _check_component(registry.BRIDGES, b.kind, b.params)
    _check_choice("bridge.solver", b.solver, BRIDGE_SOLVERS)
    kind = registry.BRIDGES[b.kind]
    if b.solver == "closed_form" and kind.learnable and not kind.closed_form:
        raise ConfigError("bridge.solver", f"bridge.kind={b.kind} has no closed form; use bridge.solver=sgd")

    s = cfg.sampler
    if len(s.steps) != k or any(n < 1 for n in s.steps):
        raise ConfigError("sampler.steps", f"needs one positive step count per stage ({k}), got {s.steps}")
    if s.uniform_steps < 1:
        raise ConfigError("sampler.uniform_steps", f"must be >= 1, got {s.uniform_steps}")
    _check_choice("sampler.mode", s.mode, SAMPLER_MODES)
    _check_component(registry.TIMESTEP_GRIDS, s.timestep_grid, s.grid_params)
    if not math.isfinite(s.guidance):
        raise ConfigError("sampler.guidance", f"must be a finite number, got {s.guidance}")
    _check_choice("sampler.precision", s.precision, SAMPLER_PRECISIONS)

    _check_data(cfg.data)
    check_buckets(cfg, MAX_SIDE)
    _check_choice("trainer.strategy", cfg.trainer.strategy, STRATEGIES)
    _check_choice("trainer.run_dir_exists", cfg.trainer.run_dir_exists, RUN_DIR_POLICIES)
    _check_choice("eval.prompt_set", cfg.eval.prompt_set, PROMPT_SETS)
    if cfg.eval.per_category < 1:
        raise ConfigError("eval.per_category", f"must be >= 1, got {cfg.eval.per_category}")
    if cfg.eval.every_n_steps < 0:
        raise ConfigError("eval.every_n_steps", f"must be >= 0, got {cfg.eval.every_n_steps}")
    if cfg.eval.train_per_category < 1:
        raise ConfigError("eval.train_per_category", f"must be >= 1, got {cfg.eval.train_per_category}")
    if cfg.eval.keep_best and cfg.eval.every_n_steps == 0:
        raise ConfigError("eval.keep_best", "needs evaluations during training: set eval.every_n_steps > 0")
    _check_eval_kind(cfg)
    check_eval_size(cfg, MAX_SIDE)
    _check_choice("optim.name", cfg.optim.name, OPTIMIZERS)
    _check_finetune(cfg)
    for key in ("max_steps", "checkpoint_every", "log_every_n_steps", "devices", "num_nodes", "keep_checkpoints",
                "accumulate_grad_batches"):
        if getattr(cfg.trainer, key) < 1:
            raise ConfigError(f"trainer.{key}", f"must be >= 1, got {getattr(cfg.trainer, key)}")


def _check_eval_kind(cfg: NamiConfig) -> None:
    e = cfg.eval
    _check_choice("eval.kind", e.kind, EVAL_KINDS)
    if e.kind == "prompts":
        if not e.prompts:
            raise ConfigError("eval.prompts", "eval.kind=prompts samples a prompt file: set eval.prompts")
        if e.keep_best:
            raise ConfigError("eval.keep_best", "ranks checkpoints by GenEval-Shapes overall: it needs eval.kind=shapes")
    elif e.fid_reference:
        raise ConfigError("eval.fid_reference", "is FID's reference set for eval.kind=prompts (GenEval-Shapes "
                                                "compares with its own renders)")  # fmt: skip
    if e.fid_reference and not e.fid_weights:
        raise ConfigError("eval.fid_reference", "needs eval.fid_weights (the FID Inception weights)")


def _check_finetune(cfg: NamiConfig) -> None:
    lora, trainable = cfg.finetune.lora, cfg.trainer.trainable
    _check_choice("finetune.base_dtype", cfg.finetune.base_dtype, BASE_DTYPES)
    if trainable is not None and (not isinstance(trainable, list) or not trainable
                                  or not all(isinstance(p, str) and p for p in trainable)):  # fmt: skip
        raise ConfigError("trainer.trainable", f"must be a non-empty list of parameter-name patterns, got {trainable}")
    for pattern in trainable or ():
        if pattern.startswith("stage:") and not (pattern[6:].isdigit() and int(pattern[6:]) < cfg.num_stages):
            raise ConfigError("trainer.trainable", f"{pattern!r}: stage:K needs a stage 0..{cfg.num_stages - 1}")
    if lora.rank < 0:
        raise ConfigError("finetune.lora.rank", f"must be >= 0 (0: no adapters), got {lora.rank}")
    if lora.rank == 0:
        return
    if lora.alpha is not None and not (math.isfinite(lora.alpha) and lora.alpha > 0):
        raise ConfigError("finetune.lora.alpha", f"must be a positive number, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError("finetune.lora.dropout", f"must lie in [0, 1), got {lora.dropout}")
    if not lora.targets:
        raise ConfigError("finetune.lora.targets", "needs at least one module-name pattern")
    if lora.stages is not None and (not lora.stages or any(not 0 <= k < cfg.num_stages for k in lora.stages)):
        raise ConfigError("finetune.lora.stages", f"needs stages among 0..{cfg.num_stages - 1}, got {lora.stages}")
    if trainable is not None:
        raise ConfigError("trainer.trainable", "with finetune.lora.rank > 0 the adapters are what trains; "
                                               "leave trainer.trainable unset")  # fmt: skip


def _check_data(d: DataConfig) -> None:
    shards = [d.shards] if isinstance(d.shards, str) else d.shards
    if not isinstance(shards, list) or not all(isinstance(p, str) and p for p in shards):
        raise ConfigError("data.shards", f"must be a path, glob or URL, or a list of them; got {d.shards!r}")
    _check_choice("data.format", d.format, ("auto", *registry.DATA_FORMATS.names()))  # auto: by file suffix
    for key in ("num_workers", "min_size", "shuffle_buffer"):
        if getattr(d, key) is not None and getattr(d, key) < 0:
            raise ConfigError(f"data.{key}", f"must be >= 0, got {getattr(d, key)}")
    for key in ("batch_size", "max_pixels", "max_member_bytes"):
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
