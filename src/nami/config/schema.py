"""The experiment schema: one dataclass per config section, defaults included (see `nami.config`).

A component chosen by registry name has its own parameters in a free-form block beside the name
(`bridge.kind` + `bridge.params`, `flow.timestep_density` + `flow.density_params`, ...): the kind parses and
validates it (`nami.registry`), and a loaded config holds it resolved, every parameter with its value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    # Rotary dims per position-id axis (0, row, col), summing to the head width; None: [0, head/2, head/2]. The
    # released NAMI-2B uses [16, 56, 56] (diffusers' FluxPosEmbed; the first axis is 0 for every token).
    rope_axes: list[int] | None = None
    qk_norm: bool = True
    nesting: bool = True  # False: every stage runs every block (the no-nesting ablation)

    @property
    def num_blocks(self) -> int:
        return self.double_blocks + self.single_blocks

    def depth(self, stage: int | None, nested: bool = True) -> int:
        """Blocks stage k runs: stage_depths[k], or every block for the uniform model (stage None), with
        nesting off (`model.nesting`), or when the caller samples without nesting (`nested=False`)."""
        if stage is None or not (self.nesting and nested):
            return self.num_blocks
        return self.stage_depths[stage]


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
    encoder_mask: bool = True  # hf: give the states encoder its padding mask (the released NAMI-2B: false)
    attention_mask: bool = True  # the MM-DiT skips padding text tokens (the released NAMI-2B: false, attends all)
    # hf: the pooled vector: auto (the pooled encoder's pooler output, else the mean of the states), first (the
    # pooled encoder's position-0 hidden state, BERT-style: HunyuanDiT's multilingual CLIP), mean
    pooling: str = "auto"
    pooled_max_length: int | None = None  # hf: tokens for the pooled encoder (None: max_length, capped by it)


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
    timestep_density: str = "logit_normal"  # in-window sigma' density: logit_normal | uniform (nami.flow.densities)
    density_params: dict[str, Any] = field(default_factory=dict)  # the density's own (logit_normal: mean, std)
    stage_ratios: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    ratio_schedule: list[RatioPhase] = field(default_factory=list)  # empty: stage_ratios throughout
    caption_dropout: float = 0.1
    prediction: str = "velocity"  # network output: velocity | data (x-prediction, same velocity loss; flow.prediction)
    prediction_params: dict[str, Any] = field(default_factory=dict)  # the prediction kind's own (none built in)


@dataclass
class BridgeConfig:
    """BridgeFlow between stages: kind from the bridges registry, and how it is fitted."""

    kind: str = "conv1x1"  # scalar_bias | conv1x1 | mlp | cnn | identity | renoise
    params: dict[str, Any] = field(default_factory=dict)  # the kind's own (mlp / cnn: hidden, the branch width)
    weights: str | None = None  # bridges.safetensors to load
    solver: str = "closed_form"  # closed_form (linear kinds) | sgd
    fit_batches: int = 20
    heldout_batches: int = 4
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
    guidance: float = 4.0  # classifier-free guidance scale w (1: no unconditional branch)
    mode: str = "progressive"  # progressive | no_nesting | uniform (one stage over [1000, 0], all blocks)
    timestep_grid: str = "linear"  # linear | official (the released NAMI-2B's integer windows), nami.flow.grids
    grid_params: dict[str, Any] = field(default_factory=dict)  # the grid's own (none built in)
    prompt_suffix: str = ""  # appended to every prompt (the release: ".extremely detailed,best quality,...")
    negative_prompt: str = ""  # the unconditional branch of guidance ("" = the empty prompt)
    # sampling precision: auto (autocast as trainer.precision resolves), fp32, bf16-mixed, fp16-mixed, or
    # fp16-true / bf16-true (weights and activations cast, as the release runs in fp16)
    precision: str = "auto"
    compile: bool = False  # torch.compile the block stack per stage shape (GPU; CPU gains nothing)
    fp8: bool = False  # float8 linears (torchao) on GPUs that have them; reported apart from bf16

    def steps_for(self, mode: str | None = None) -> list[int]:
        """Euler steps per stage for a sampler mode (default `mode`): uniform is one stage of uniform_steps."""
        return [self.uniform_steps] if (mode or self.mode) == "uniform" else list(self.steps)


@dataclass
class DataConfig:
    """Streaming shards (webdataset tars or parquet), see DESIGN section 5 and data_modules/."""

    # A path, glob, brace range ({00000..00009}), directory or fsspec URL, or a list of them. Typed Any so
    # that the override `data.shards=/path/*.tar` (one string) is accepted as well as a list.
    shards: Any = field(default_factory=list)
    format: str = "auto"  # auto (from the file name) | webdataset | parquet | hf (datasets.load_dataset)
    num_workers: int = 2  # dataloader workers per rank
    batch_size: int = 16  # samples per rank and batch, split across stages by the stage ratios
    key_column: str = "key"  # parquet: the sample key (a row without one is "<file>:<row>")
    caption_column: str = "caption"  # parquet / hf: the caption column; tars: .txt, else this json field
    image_column: str = "image"  # parquet / hf: image bytes, or a {"bytes", "path"} struct
    hf_split: str = "train"  # hf: the split of each dataset in data.shards
    hf_name: str | None = None  # hf: the dataset's configuration (load_dataset's `name`), None: its default
    min_size: int | None = None  # skip images whose shorter side is below this (None: resolution // 8; 0: none)
    precomputed: bool = False  # shards written by `nami data encode`: stored latents and text states
    max_pixels: int = 64_000_000  # skip images with more pixels (decompression bombs), before decoding
    # Skip a sample holding more bytes than this (a tar record's members together, a parquet / hf row) before
    # it is read (too_large_member): what one record may allocate in a reader. 64 MiB holds any web photo within
    # max_pixels (a 64-megapixel JPEG is 20-40 MB) and any precomputed payload of the shipped configs (2048 px,
    # 16-channel fp32 latent plus 256 x 4096 text states: 8 MB), while a hostile member (a 24 KB sparse tar or
    # a 1.5 MB .tar.gz expanding to 1.5 GB) costs one skip. Raise it for big lossless images (a 64-megapixel
    # PNG can reach 190 MB).
    max_member_bytes: int = 64 * 2**20
    shuffle_buffer: int = 1000  # 0: no shuffle; n: shard order per epoch + seeded shuffle of n-record blocks
    # Aspect-ratio buckets (nami.config.buckets): square (resolution x resolution only), auto (about resolution^2
    # pixels, 1:4 to 4:1, every stage grid whole) or a list of [height, width] in pixels. Typed Any: a string or
    # a list.
    buckets: Any = "square"


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    schedule: str = "constant"  # after warmup: constant | cosine (to 0 at trainer.max_steps)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # adamw (torch) | adamw8bit (bitsandbytes' 8-bit AdamW: optimizer state in 8 bits; needs CUDA) |
    # adafactor (torch's Adafactor: factored second moments, no first moment; memory-light, any device)
    name: str = "adamw"


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
    resume: str | None = None  # "last", "auto" (last if there is one, else fresh) or a checkpoint path
    init_from: str | None = None  # start from these weights (a converted or exported model directory)
    run_dir_exists: str = "error"  # a run directory made with another config: error | new (suffix) | overwrite
    keep_checkpoints: int = 3  # newest step checkpoints kept (also across resumes)
    activation_checkpointing: bool = False  # fsdp: recompute each block's activations in backward
    skip_nonfinite: bool = False  # a non-finite loss or gradient: skip the step (True) or stop (False)
    deterministic: bool = False  # torch deterministic algorithms (exact resume on GPU; slower)
    # What trains: parameter-name patterns (fnmatch over "model.double_blocks.0.img_attn.qkv.weight", "bridge.*",
    # ...; "stage:K" stands for every parameter of the blocks stage K adds); everything else is frozen.
    # None: every parameter of the model (and of a text encoder that trains) trains, today's default.
    trainable: list[str] | None = None
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step: the step means one N-times-larger batch


@dataclass
class LoraConfig:
    """Low-rank adapters (PEFT's LoRA) on the MM-DiT's linear layers; the base weights are frozen."""

    rank: int = 0  # 0: no adapters
    alpha: float | None = None  # scale alpha / rank of the adapters' output; None: alpha = rank (scale 1)
    dropout: float = 0.0
    # module-name patterns (fnmatch over "double_blocks.0.img_attn.qkv", ...): every block's attention
    # projections and MLPs by default (single blocks fuse qkv with the MLP's input in linear1, and the
    # attention output with the MLP's output in linear2)
    targets: list[str] = field(default_factory=lambda: ["*_attn.qkv", "*_attn.proj", "*_mlp.fc1", "*_mlp.fc2",
                                                        "single_blocks.*.linear1", "single_blocks.*.linear2"])
    stages: list[int] | None = None  # only the blocks these stages add (e.g. [2]: what stage 2 runs beyond stage 1)


@dataclass
class FinetuneConfig:
    lora: LoraConfig = field(default_factory=LoraConfig)
    base_dtype: str = "float32"  # frozen base weights stored as float32 | bfloat16 (trained tensors stay float32)


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
    """`nami eval` and the evaluation during training: the GenEval-Shapes prompt set or a prompt file, and local
    weights for FID / CLIPScore (skipped when None)."""

    # what the evaluation during training samples and scores: shapes (GenEval-Shapes, the tiny default) or
    # prompts (eval.prompts with fixed seeds: an image grid, CLIP score, and FID against eval.fid_reference)
    kind: str = "shapes"
    prompts: str | None = None  # prompt file (text, JSONL, a directory of .txt) or shipped set for kind prompts
    fid_reference: str | None = None  # FID's reference for kind prompts: an image folder or .npz (mu, sigma)

    per_category: int = 50  # prompts per GenEval category (six categories)
    # standard: per_category prompts per category; large: a fixed 200 (the standard set is its start, same images)
    prompt_set: str = "standard"
    seed: int = 1000  # prompt-set seed (prompt i samples with noise seed + i), apart from the training data's 0
    batch_size: int = 32  # images per sampling / feature batch
    fid_weights: str | None = None  # the FID Inception weights (torch-fidelity's .pth or .safetensors), nami.eval.fid
    clip_path: str | None = None  # local CLIPModel + CLIPProcessor directory
    every_n_steps: int = 0  # training: score GenEval-Shapes with the EMA weights every n steps (0: off)
    keep_best: bool = False  # training: also keep the checkpoint with the best eval/overall
    # training: prompts per category of those evaluations (the first of `nami eval`'s set, same noise seeds)
    train_per_category: int = 10
    # the image size `nami eval` and the evaluations during training sample at: [height, width] in pixels on the
    # stage grid (e.g. a data.buckets size; nami.config.buckets.eval_size); None: resolution x resolution. Typed
    # Any: a list or null.
    size: Any = None


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
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def num_stages(self) -> int:
        return len(self.flow.stage_range) - 1

    @property
    def latent_size(self) -> int:
        """Full-stage latent side (pixels / autoencoder downsample)."""
        return self.resolution // self.autoencoder.downsample

    def min_image_side(self) -> int:
        """Shorter image side below which a sample is skipped as too small (data.min_size, default 1/8 of the
        resolution: upscaling more than 8x gives a blurred image, not a training sample)."""
        return self.resolution // 8 if self.data.min_size is None else self.data.min_size

    def stage_latent_sizes(self) -> list[int]:
        """Latent side of each stage, coarsest first."""
        k = self.num_stages
        return [self.latent_size // 2 ** (k - 1 - s) for s in range(k)]
