"""`JointFlowModule`: the nested MM-DiT trained on every stage in one batch, bridges frozen (DESIGN section 3)."""

from __future__ import annotations

import copy
import math
from functools import partial

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from ..config import NamiConfig, config_from_dict, to_dict
from ..errors import RunStopped
from ..flow import StageLosses
from ..models import TextEmbedding, forward_cost, model_fn
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


class JointFlowModule(L.LightningModule):
    """Loss = mean over the batch of ||v(z, T, text) - (start_k - end_k)||^2, each group at its own stage.

    Receives its parts built (`nami.parts.build_parts`); built from `config` alone when Lightning restores it
    with `load_from_checkpoint` (the checkpoint then fills in every weight, the bridge's included).

    The batch says what it holds (`data_modules.StageBatch`): pixels or latents (`latents`), already pooled to
    each stage or not (`pooled`), and stored text embeddings or captions only (`text`). A batch from
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
        # EMA of everything trained (a plain copy, so FSDP shards it like the original and checkpoints hold it)
        self.ema = copy.deepcopy(self.trainable()).requires_grad_(False)
        self._ema_step = 0  # global step of the last EMA update
        # the static FLOP model, once per run: Lightning's ThroughputMonitor reads flops_per_batch (MFU on GPUs)
        self.stage_flops = [forward_cost(cfg, k).total for k in range(cfg.num_stages)]
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
        """Checkpoints written before the frozen encoders were left out still load: their copies are dropped."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.split(".", 1)[0] in self._frozen]:
            del state[key]

    def trainable(self) -> nn.ModuleDict:
        """The modules the optimizer updates: the MM-DiT, plus the text encoder when it learns (a child module;
        frozen encoders are not)."""
        parts = {"model": self.model}
        if "text_encoder" in self._modules:
            parts["text_encoder"] = self.text_encoder
        return nn.ModuleDict(parts)

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
        """A sampler over the current (or EMA) weights."""
        source = self.ema if use_ema else self.trainable()
        text_encoder, autoencoder = self.encoders()
        text = source["text_encoder"] if "text_encoder" in source else text_encoder
        # the configured sampler, but never a *-true precision (it would cast the weights still training), and no
        # compiling for the occasional preview
        return Pipeline(source["model"], text, autoencoder, self.flow, self.cfg.latent_size,
                        SamplerSettings.from_config(self.cfg, precision="auto", compile=False))

    def configure_model(self) -> None:
        """FSDP2 (trainer.strategy=fsdp): shard every block, then each trainable root, on the data-parallel mesh."""
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for parts in (self.trainable(), self.ema):
            for block in parts["model"].blocks():
                fully_shard(block, mesh=mesh)
            for module in parts.values():
                fully_shard(module, mesh=mesh)

    def configure_optimizers(self):
        o = self.cfg.optim
        # foreach: one kernel per op over all tensors; PyTorch's default on CPU is a per-tensor loop (4% of a
        # tiny step here). Works on FSDP2's sharded DTensor parameters too.
        optimizer = torch.optim.AdamW(
            self.trainable().parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, foreach=True
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, warmup=o.warmup_steps, total=self.cfg.trainer.max_steps, schedule=o.schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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

    def stage_losses(self, batch) -> StageLosses:
        """The flow's per-stage losses for one batch; noise and sigma' come from a generator fixed by
        (seed, rank, step), caption dropout from its CPU twin, so a resumed run draws what it would have."""
        gen = step_generator(self.cfg.seed, self.global_rank, self.global_step, self.device)
        cpu_gen = step_generator(self.cfg.seed, self.global_rank, self.global_step)
        latents, text = [], []
        precomputed = batch.text if batch.text is not None else [None] * len(batch.images)
        for images, captions, k, group_text in zip(batch.images, batch.captions, batch.stages, precomputed):
            if len(captions) == 0:
                continue
            latents.append((k, self.stage_latents(images, k, batch.pooled, latents=batch.latents)))
            text.append(self.stage_text(captions, group_text, cpu_gen))
        return self.flow.training_losses(model_fn(self.model), latents, text, gen)

    def training_step(self, batch, batch_idx):
        losses = self.stage_losses(batch)
        loss = losses.total
        bad = self._first_nonfinite(losses.losses, losses.stages)
        if bad is not None:
            return self._nonfinite(f"loss in stage {bad}")
        total = sum(losses.counts)
        for k, n, loss_k in losses:
            self.log(f"train/loss_stage{k}", loss_k, batch_size=n, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=total, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=total)
        self.flops_per_batch = 3 * sum(n * self.stage_flops[k] for k, n, _ in losses)
        return loss

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
        return None  # Lightning skips backward and the optimizer step

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip the global gradient norm (works on sharded DTensor gradients) and refuse non-finite ones."""
        params = [p for p in self.trainable().parameters() if p.grad is not None]
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        if not torch.isfinite(norm):
            self._nonfinite("gradient norm")
            for p in params:  # AdamW leaves parameters without a gradient untouched
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
            ema = list(self.ema.parameters())
            torch._foreach_lerp_(ema, list(self.trainable().parameters()), 1.0 - decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Never write NaNs: every trainable and EMA weight must be finite."""
        for name, p in [*self.trainable().named_parameters(), *self.ema.named_parameters()]:
            local = p.to_local() if hasattr(p, "to_local") else p
            if not torch.isfinite(local).all():
                raise NonFiniteError(f"refusing to checkpoint: parameter {name} is not finite")
