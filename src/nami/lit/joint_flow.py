"""`JointFlowModule`: the nested MM-DiT trained on every stage in one batch, bridges frozen (DESIGN section 3)."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from functools import partial

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from ..artifacts.weights import BASE_FROM_INIT, load_initial_weights
from ..config import ConfigError, NamiConfig, config_from_dict, to_dict
from ..errors import RunStopped
from ..flow import StageLosses
from ..models import TextEmbedding, forward_cost, model_fn
from ..models.lora import TRAINING_ADAPTER, AdapterSpec, add_adapter, is_adapter_tensor
from ..models.selection import trainable_names
from ..flow.seeds import step_generator
from ..parts import Parts, build_encoders, build_parts
from ..sampling import Pipeline, SamplerSettings


def lr_factor(step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """Learning-rate multiplier at `step`: linear warmup, then constant or a cosine to 0 at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


class NonFiniteError(RunStopped):
    """A non-finite loss or gradient with trainer.skip_nonfinite off: the run stops, naming step and stage."""


# ---- optim.name -------------------------------------------------------------------------------------------------
BITSANDBYTES = "bitsandbytes==0.50.2"  # the pin in requirements.txt
# Optimizers whose update reads whole tensors (Adafactor's factored row / column statistics) or runs a library
# kernel (bitsandbytes) and so fails on FSDP2's sharded DTensor parameters.
UNSHARDABLE = {"adafactor": "torch's Adafactor computes row and column statistics of whole tensors",
               "adamw8bit": "bitsandbytes' kernels take no DTensor shards"}  # fmt: skip


def check_optimizer(cfg: NamiConfig) -> None:
    """Refuse, before any compute, an optimizer this run cannot step: one line naming optim.name."""
    name = cfg.optim.name
    if name in UNSHARDABLE and cfg.trainer.strategy == "fsdp":
        raise ConfigError("optim.name", f"{name} cannot step FSDP2's sharded parameters ({UNSHARDABLE[name]}): "
                                        "use trainer.strategy=ddp or optim.name=adamw")  # fmt: skip
    if name == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("optim.name", f"adamw8bit needs {BITSANDBYTES} (pip install {BITSANDBYTES}, "
                                            "or `make setup`)") from None  # fmt: skip


def build_optimizer(params: list[nn.Parameter], o) -> torch.optim.Optimizer:
    """The optimizer `optim.name` names over `params` (an `OptimConfig` gives lr, betas, weight decay).

    adamw: torch's AdamW with foreach (one kernel per op over all tensors; PyTorch's default on CPU is a per-tensor
    loop, 4% of a tiny step here); works on FSDP2's sharded DTensor parameters. adamw8bit: bitsandbytes' AdamW8bit
    (both moments in 8 bits, block-wise quantised; tensors under 4096 elements keep 32-bit moments); runs on CPUs
    and GPUs. adafactor: torch's Adafactor (no first moment, factored second moment); `lr` is its relative step
    size (torch's default 1e-2) and `betas` do not apply.
    """
    if o.name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "adafactor":
        return torch.optim.Adafactor(params, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, foreach=True)


def partial_copy(module: nn.Module, names: list[str]) -> nn.Module:
    """Copies of `module`'s parameters `names` alone, at the same dotted names in a tree of plain modules (the
    EMA of a part that trains only some of its tensors: no second copy of the frozen rest)."""
    tensors = dict(module.named_parameters())
    root = nn.Module()
    for name in names:
        *path, leaf = name.split(".")
        parent = root
        for step in path:
            if step not in parent._modules:
                parent.add_module(step, nn.Module())
            parent = parent._modules[step]
        parent.register_parameter(leaf, nn.Parameter(tensors[name].detach().clone(), requires_grad=False))
    return root


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class JointFlowModule(L.LightningModule):
    """Loss = mean over the batch of ||v(z, T, text) - (start_k - end_k)||^2, each group at its own stage.

    Receives its parts built (`nami.parts.build_parts`); built from `config` alone when Lightning restores it
    with `load_from_checkpoint` (the checkpoint then fills in every weight, the bridge's included).

    The batch says what it holds (`data_modules.StageBatch`): pixels or latents (`latents`), already pooled to
    each stage or not (`pooled`), and stored text embeddings or captions only (`text`). Every batch is one
    aspect-ratio bucket (`size`, data.buckets): its groups are whatever shape that bucket's stages have. A batch from
    precomputed shards (data.precomputed) holds full-size latents and stored text embeddings: the module pools
    the latents per stage and swaps in `unconditional` (the stored embedding of the empty prompt) where caption
    dropout drops a caption. Its parts then come without the frozen encoders (`build_parts(...,
    encoders=False)`); sampling builds them on first use (`encoders`).
    """

    def __init__(self, config: NamiConfig | dict, parts: Parts | None = None,
                 unconditional: TextEmbedding | None = None):  # fmt: skip
        super().__init__()
        cfg = config if isinstance(config, NamiConfig) else config_from_dict(config)
        self.cfg = cfg
        self.save_hyperparameters({"config": to_dict(cfg)})
        parts = parts if parts is not None else build_parts(cfg, fitted=False, encoders=not cfg.data.precomputed)
        self.model = parts.model
        self.model.grad_checkpointing = cfg.trainer.activation_checkpointing
        # finetune.lora: PEFT adapters on the MM-DiT's linear layers (B zero: the model's output is unchanged); they
        # are then all that trains (`trainable_selection`), and trainer.init_from fills the base around them
        self.adapter: AdapterSpec | None = None
        if cfg.finetune.lora.rank > 0:
            self.adapter = AdapterSpec.from_config(cfg.finetune.lora, cfg.model, self.model)
            add_adapter(self.model, self.adapter, TRAINING_ADAPTER, key="finetune.lora")
        # Frozen encoders are plain attributes, not child modules: they stay out of the state dict and so out
        # of every checkpoint (at 2B, mT5-XXL alone is ~9 GB), and are rebuilt from the config on load.
        # _apply below still moves and casts them with the module.
        self._frozen: dict[str, nn.Module] = {}
        if parts.text_encoder is not None and parts.text_encoder.trainable:
            self.text_encoder = parts.text_encoder
        elif parts.text_encoder is not None:
            self._hold_frozen("text_encoder", parts.text_encoder)
        if parts.autoencoder is not None:
            self._hold_frozen("autoencoder", parts.autoencoder)
        self.unconditional = unconditional  # moved to the device on first use
        self.bridge = parts.bridge.requires_grad_(False).eval()
        self.flow = parts.flow
        self.freeze_all_but(self.trainable_selection())
        # EMA of exactly the trained tensors, under ema.<part>.<name>: a part that trains whole is a plain copy (FSDP
        # shards it like the original and checkpoints hold it), one that trains partly keeps copies of those
        # tensors alone (`partial_copy`)
        self.ema, self._ema_whole = self._ema_copies()
        self._ema_step = 0  # global step of the last EMA update
        self.initialised_from: str | None = None  # trainer.init_from, once load_initial_weights filled the parts
        self._skip_step = False  # a micro-batch of the current optimizer step had a non-finite loss
        self._running: dict[str, tuple[torch.Tensor, int]] = {}  # logged means over a step's micro-batches
        # the static FLOP model, once per bucket: Lightning's ThroughputMonitor reads flops_per_batch (MFU on GPUs)
        self._stage_flops: dict[tuple[int, int], list[int]] = {}
        self.stage_flops = self.stage_flops_at(None)
        self.flops_per_batch = 0

    # ---- parts ----------------------------------------------------------------------------------------
    def _hold_frozen(self, name: str, module: nn.Module) -> None:
        object.__setattr__(self, name, module.requires_grad_(False))
        self._frozen[name] = module

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for module in self._frozen.values():
            module._apply(fn, recurse)
        return self

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints written before the frozen encoders were left out still load: their copies are dropped. The
        frozen base tensors a checkpoint left out (`checkpoint_omits`) are this module's own, loaded from
        trainer.init_from before a resume (and here, when Lightning builds the module from a checkpoint)."""
        if "state_dict" not in checkpoint:  # FSDP: the strategy has loaded the weights itself
            return
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.split(".", 1)[0] in self._frozen]:
            del state[key]
        left_out = [k for k in checkpoint.get(BASE_FROM_INIT, ()) if k not in state]
        if left_out:
            if self.initialised_from is None:
                load_initial_weights(self, self.cfg)
            own = self.state_dict()
            state.update({k: own[k] for k in left_out})

    def trainable(self) -> nn.ModuleDict:
        """The networks whose weights a weights file holds ("model.", and "text_encoder." for a text encoder that
        learns: a child module; frozen encoders are not); trainer.init_from fills them."""
        parts = {"model": self.model}
        if "text_encoder" in self._modules:
            parts["text_encoder"] = self.text_encoder
        return nn.ModuleDict(parts)

    def named_parts(self) -> dict[str, nn.Module]:
        """Every part trainer.trainable may select from, by the prefix of its parameter names: the MM-DiT, a text
        encoder that learns, the bridge."""
        return {**self.trainable(), "bridge": self.bridge}

    def trainable_selection(self) -> set[str]:
        """The parameter names (`named_parts` prefixes) that train: trainer.trainable, read by
        `nami.models.selection.trainable_names` (None: every parameter of the model and of a learning text encoder),
        or the adapters of a LoRA run."""
        names = [f"{part}.{n}" for part, module in self.named_parts().items() for n, _ in module.named_parameters()]
        if self.adapter is not None:  # a LoRA run: the adapters alone (validation refuses trainer.trainable beside)
            return {n for n in names if n.startswith("model.") and is_adapter_tensor(n)}
        m = self.cfg.model
        return trainable_names(names, self.cfg.trainer.trainable, m.stage_depths, m.double_blocks)

    def freeze_all_but(self, chosen: set[str]) -> None:
        """requires_grad on exactly the parameters `chosen` names; frozen ones of the networks are stored in
        finetune.base_dtype (trained tensors stay float32)."""
        base_dtype = getattr(torch, self.cfg.finetune.base_dtype)
        for part, module in self.named_parts().items():
            for name, p in module.named_parameters():
                trains = f"{part}.{name}" in chosen
                p.requires_grad_(trains)
                if not trains and part != "bridge" and p.is_floating_point() and p.dtype != base_dtype:
                    p.data = p.data.to(base_dtype)

    def trained_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every tensor that trains, in `named_parts` order: what the optimizer, clipping and the
        EMA touch."""
        return [(f"{part}.{name}", p) for part, module in self.named_parts().items()
                for name, p in module.named_parameters() if p.requires_grad]  # fmt: skip

    def checkpoint_omits(self) -> set[str]:
        """State-dict keys a checkpoint leaves out: the frozen network tensors trainer.init_from provides (a resume
        reloads them from there before the checkpoint restores the rest). Frozen tensors nothing else provides (a
        from-scratch model with frozen blocks) and the bridge are kept."""
        if not self.cfg.trainer.init_from:
            return set()
        return {f"{part}.{name}" for part, module in self.trainable().items()
                for name, p in module.named_parameters() if not p.requires_grad}  # fmt: skip

    # ---- the EMA ----------------------------------------------------------------------------------------------
    def _ema_copies(self) -> tuple[nn.ModuleDict, dict[str, bool]]:
        ema, whole = nn.ModuleDict(), {}
        for part, module in self.named_parts().items():
            params = dict(module.named_parameters())
            trained = [n for n, p in params.items() if p.requires_grad]
            if not trained:
                continue
            # every tensor of a network trains: today's plain copy, which sampling runs directly
            whole[part] = part != "bridge" and len(trained) == len(params)
            ema[part] = copy.deepcopy(module) if whole[part] else partial_copy(module, trained)
        return ema.requires_grad_(False), whole

    def _ema_pairs(self, partial_only: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(EMA tensors, the live tensors they follow), matched by name (FSDP2 keeps names, swaps the tensors)."""
        live = dict(self.trained_parameters())
        ema, own = [], []
        for part, copies in self.ema.items():
            if partial_only and self._ema_whole[part]:
                continue
            for name, e in copies.named_parameters():
                ema.append(e)
                own.append(live[f"{part}.{name}"])
        return ema, own

    def restart_ema(self) -> None:
        """EMA <- the live trained tensors (after new initial weights, trainer.init_from)."""
        with torch.no_grad():
            for part, copies in self.ema.items():
                if self._ema_whole[part]:
                    copies.load_state_dict(self.named_parts()[part].state_dict())
            ema, own = self._ema_pairs(partial_only=True)
            if ema:  # local shards: DTensor has no foreach copy (both sides are sharded alike)
                torch._foreach_copy_([_local(t) for t in ema], [_local(t) for t in own])

    @contextmanager
    def ema_applied(self):
        """The EMA's values in the live tensors of the parts the EMA holds partly, the live values back after
        (`pipeline(use_ema=True)` samples those parts from the live modules, and a whole part from its copy).
        Sampling runs inside it."""
        self._reshard()
        ema, own = self._ema_pairs(partial_only=True)
        # local shards: DTensor has no foreach copy, and an EMA copy is sharded like the tensor it follows
        ema, own = [_local(t.detach()) for t in ema], [_local(t.detach()) for t in own]
        with torch.no_grad():
            saved = [t.clone() for t in own]
            if own:
                torch._foreach_copy_(own, ema)
        try:
            yield
        finally:
            self._reshard()
            with torch.no_grad():
                if own:
                    torch._foreach_copy_(own, saved)

    def _reshard(self) -> None:
        """FSDP2 keeps a root module's tensors gathered after a forward that no backward follows (sampling): shard
        them again, so that the shards written here are what the next forward gathers, and the EMA update meets
        sharded tensors."""
        from torch.distributed.fsdp import FSDPModule

        for module in self.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def ema_weights(self) -> dict[str, torch.Tensor]:
        """The complete networks' state ("model.", "text_encoder."): the EMA where it trained, the live base
        elsewhere; sharded tensors stay sharded (the caller gathers)."""
        out = {}
        for part, module in self.trainable().items():
            if self._ema_whole.get(part):
                state = self.ema[part].state_dict()
            else:
                state = module.state_dict()
                if part in self.ema:
                    state.update(self.ema[part].state_dict())
            out.update({f"{part}.{k}": v for k, v in state.items()})
        return out

    def encoders(self) -> tuple[nn.Module, nn.Module]:
        """The text encoder and the autoencoder; built (and moved to this module's device) on first use when
        the module trains from precomputed shards, since sampling still encodes prompts and decodes latents."""
        missing = [name for name in ("text_encoder", "autoencoder") if getattr(self, name, None) is None]
        if missing:
            built = dict(zip(("text_encoder", "autoencoder"), build_encoders(self.cfg)))
            for name in missing:
                self._hold_frozen(name, built[name].to(self.device))
        return self.text_encoder, self.autoencoder

    def pipeline(self, use_ema: bool = True) -> Pipeline:
        """A sampler over the current (or EMA) weights. A part the EMA holds whole is sampled from its copy; the
        other parts are the live modules, which hold the EMA's values inside `ema_applied()`."""
        text_encoder, autoencoder = self.encoders()

        def source(part: str, live: nn.Module) -> nn.Module:
            return self.ema[part] if use_ema and self._ema_whole.get(part) else live

        # the configured sampler, but never a *-true precision (it would cast the weights still training), and no
        # compiling for the occasional preview
        return Pipeline(source("model", self.model), source("text_encoder", text_encoder), autoencoder, self.flow,
                        self.cfg.latent_size, SamplerSettings.from_config(self.cfg, precision="auto", compile=False))

    def configure_model(self) -> None:
        """FSDP2 (trainer.strategy=fsdp): shard every block, then each network's root (frozen tensors included: the
        base is sharded too), a bridge that trains, then the EMA the same way (a partial EMA as one group), on the
        data-parallel mesh. A frozen bridge stays whole on every rank."""
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        parts = dict(self.trainable())
        if any(p.requires_grad for p in self.bridge.parameters()):
            parts["bridge"] = self.bridge
        for group in (parts, {part: self.ema[part] for part in self.ema}):
            for part, module in group.items():
                if part == "model" and (group is parts or self._ema_whole[part]):
                    for block in module.blocks():
                        fully_shard(block, mesh=mesh)
                fully_shard(module, mesh=mesh)

    def configure_optimizers(self):
        o = self.cfg.optim
        optimizer = build_optimizer([p for _, p in self.trained_parameters()], o)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, warmup=o.warmup_steps, total=self.cfg.trainer.max_steps, schedule=o.schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def stage_flops_at(self, size: tuple[int, int] | None) -> list[int]:
        """FLOPs of one forward per stage for an image of `size` (a batch's bucket; None: the square)."""
        size = size or (self.cfg.resolution, self.cfg.resolution)
        if size not in self._stage_flops:
            self._stage_flops[size] = [forward_cost(self.cfg, k, size=size).total for k in range(self.cfg.num_stages)]
        return self._stage_flops[size]

    # ---- training -------------------------------------------------------------------------------------
    def stage_latents(self, images: torch.Tensor, k: int, pooled: bool, latents: bool = False) -> torch.Tensor:
        """Model-space data of one stage group. `pooled` groups were already brought to the stage's side in
        the data workers (pixel space); otherwise the images are full resolution and the pyramid is built on
        the latents (VAE(Down(img)) != Down(VAE(img))). `latents`: the group holds stored full-size latents."""
        x = images.float() if latents else self.autoencoder.encode(images)
        return x if pooled else self.flow.stage_latents(x, k)

    def stage_text(self, captions: list[str], precomputed: TextEmbedding | None,
                   generator: torch.Generator) -> TextEmbedding:  # fmt: skip
        """The conditioning of one group after caption dropout (drawn from `generator` either way): encoded
        now, or the `precomputed` embeddings with the unconditional one where a caption was dropped."""
        if precomputed is None:
            kept = self.flow.drop_captions(captions, generator)
            return self.text_encoder(kept).to(self.device).for_attention()
        keep = self.flow.kept_captions(len(captions), generator)
        text = TextEmbedding(precomputed.states.float(), precomputed.mask.bool(), precomputed.pooled.float())
        if all(keep):
            return text.for_attention()
        if self.unconditional is None:
            raise RuntimeError("training from precomputed shards needs the stored unconditional embedding "
                               "(JointFlowModule(..., unconditional=datamodule.unconditional()))")  # fmt: skip
        u = self.unconditional = self.unconditional.to(self.device)
        rows = torch.tensor(keep, device=self.device)
        return TextEmbedding(torch.where(rows[:, None, None], text.states, u.states.float()),
                             torch.where(rows[:, None], text.mask, u.mask.bool()),
                             torch.where(rows[:, None], text.pooled, u.pooled.float())).for_attention()  # fmt: skip

    def stage_losses(self, batch, micro: int = 0) -> StageLosses:
        """The flow's per-stage losses for one batch; noise and sigma' come from a generator fixed by
        (seed, rank, step, micro-batch), caption dropout from its CPU twin, so a resumed run draws what it would
        have and every micro-batch of an accumulated step draws its own."""
        gen = step_generator(self.cfg.seed, self.global_rank, self.global_step, self.device, micro)
        cpu_gen = step_generator(self.cfg.seed, self.global_rank, self.global_step, micro=micro)
        latents, text = [], []
        precomputed = batch.text if batch.text is not None else [None] * len(batch.images)
        for images, captions, k, group_text in zip(batch.images, batch.captions, batch.stages, precomputed):
            if len(captions) == 0:
                continue
            latents.append((k, self.stage_latents(images, k, batch.pooled, latents=batch.latents)))
            text.append(self.stage_text(captions, group_text, cpu_gen))
        return self.flow.training_losses(model_fn(self.model), latents, text, gen)

    def training_step(self, batch, batch_idx):
        """One micro-batch: trainer.accumulate_grad_batches of them make an optimizer step, and Lightning divides
        each one's loss by their number. Every micro-batch holds data.batch_size samples, each loss is the mean over
        its samples, so the step's gradient is that of the mean over all N x batch_size samples: one N-times-larger
        batch (tests/test_accumulation.py)."""
        micro = batch_idx % self.trainer.accumulate_grad_batches if self._trainer is not None else 0
        if micro == 0:
            self._running.clear()
        losses = self.stage_losses(batch, micro)
        loss = losses.total
        bad = self._first_nonfinite(losses.losses, losses.stages)
        if bad is not None:
            return self._nonfinite(f"loss in stage {bad}")
        total = sum(losses.counts)
        # Lightning logs a step's last value: log the sample-weighted mean over the step's micro-batches so far
        for k, n, loss_k in losses:
            self.log(f"train/loss_stage{k}", self._step_mean(f"stage{k}", loss_k, n), batch_size=n, sync_dist=True)
        self.log("train/loss", self._step_mean("total", loss, total), prog_bar=True, batch_size=total, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=total)
        stage_flops = self.stage_flops_at(getattr(batch, "size", None))  # the batch's bucket
        self.flops_per_batch = 3 * sum(n * stage_flops[k] for k, n, _ in losses)
        return loss

    def _step_mean(self, name: str, value: torch.Tensor, n: int) -> torch.Tensor:
        """Mean of `value` (over `n` samples) and the earlier micro-batches' values of this step (the value itself at
        the first micro-batch, so a step without accumulation logs exactly its loss)."""
        value = value.detach()
        if name in self._running:
            mean, seen = self._running[name]
            value = (mean * seen + value * n) / (seen + n)
            n += seen
        self._running[name] = (value, n)
        return value

    def _first_nonfinite(self, losses: list[torch.Tensor], stages: list[int]) -> int | None:
        """The first stage whose loss is non-finite on any rank (all ranks agree, so they skip together)."""
        finite = torch.stack([torch.isfinite(x.detach()) for x in losses]).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        bad = [k for k, ok in zip(stages, finite.tolist()) if ok < 1]
        return bad[0] if bad else None

    def _nonfinite(self, what: str):
        message = f"non-finite {what} at step {self.global_step}"
        if not self.cfg.trainer.skip_nonfinite:
            raise NonFiniteError(f"{message} (set trainer.skip_nonfinite=true to skip such steps)")
        self.print(f"skipping step: {message}")
        self.log("train/skipped_nonfinite", 1.0, reduce_fx="sum")
        self._skip_step = True  # the whole optimizer step, whichever of its micro-batches it was
        return None  # Lightning skips this micro-batch's backward

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip the global gradient norm of the trained tensors (works on sharded DTensor gradients) and refuse
        non-finite ones; a step one of whose micro-batches had a non-finite loss is dropped whole."""
        params = [p for _, p in self.trained_parameters() if p.grad is not None]
        skip, self._skip_step = self._skip_step, False
        if skip:
            for p in params:  # the optimizers leave parameters without a gradient untouched
                p.grad = None
            return
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        if not torch.isfinite(norm):
            self._nonfinite("gradient norm")
            self._skip_step = False
            for p in params:
                p.grad = None
            return
        self.log("train/grad_norm", norm)

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the EMA update: ema <- decay ema + (1 - decay) theta.

        Done here rather than in `on_train_batch_end` because Lightning runs callbacks (ModelCheckpoint) first
        in that hook: a checkpoint written there would hold an EMA one update behind, and a resumed run would
        drift from an uninterrupted one. The decay warms up as min(ema_decay, (1 + step) / (10 + step)), so
        short runs are not dominated by the initial weights (whose zero head predicts no velocity at all).
        """
        super().optimizer_step(*args, **kwargs)
        if self.global_step <= self._ema_step:  # a skipped (non-finite) step
            return
        self._ema_step = step = self.global_step
        decay = min(self.cfg.optim.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            ema, own = self._ema_pairs()
            torch._foreach_lerp_(ema, own, 1.0 - decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Never write NaNs: every trained and EMA tensor must be finite. Leave out the frozen base tensors that
        trainer.init_from provides (`checkpoint_omits`), naming them under BASE_FROM_INIT so that a reader knows
        where they are (`nami.artifacts.weights.read_weights`)."""
        for name, p in [*self.trained_parameters(), *(("ema." + n, p) for n, p in self.ema.named_parameters())]:
            if not torch.isfinite(_local(p)).all():
                raise NonFiniteError(f"refusing to checkpoint: parameter {name} is not finite")
        omits = self.checkpoint_omits()
        if omits:
            state = checkpoint["state_dict"]
            for key in omits:
                state.pop(key, None)
            checkpoint[BASE_FROM_INIT] = sorted(omits)
