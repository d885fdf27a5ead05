"""`JointFlowModule`: the nested MM-DiT trained on every stage in one batch, bridges frozen (DESIGN section 3)."""

from __future__ import annotations

import copy
import math
from functools import partial

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..bridges import BridgeFlow
from ..config import NamiConfig, to_dict
from ..errors import RunStopped
from ..flow import PyramidSchedule, flow_sample, velocity_from_output
from ..models import build_autoencoder, build_model, build_text_encoder
from ..perf import forward_cost, image_tokens
from .batches import drop_captions, group_latents, step_generator
from .pipeline import Pipeline


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
    """Loss = mean over the batch of ||v(z, T, text) - (start_k - end_k)||^2, each group at its own stage."""

    def __init__(self, cfg: NamiConfig, bridge: BridgeFlow | None):
        super().__init__()
        self.cfg = cfg
        self.save_hyperparameters({"config": to_dict(cfg)})
        self.schedule = PyramidSchedule.from_config(cfg.flow)
        self.model = build_model(cfg)
        self.model.grad_checkpointing = cfg.trainer.activation_checkpointing
        self.text_encoder = build_text_encoder(cfg.text_encoder)
        self.autoencoder = build_autoencoder(cfg.autoencoder)
        self.bridge = bridge.requires_grad_(False).eval() if bridge is not None else None
        # EMA of everything trained (a plain copy, so FSDP shards it like the original and checkpoints hold it)
        self.ema = copy.deepcopy(self.trainable()).requires_grad_(False)
        self._ema_step = 0  # global step of the last EMA update
        self.flops_per_batch = 0  # read by Lightning's ThroughputMonitor (MFU on GPUs)
        self.tokens_in_batch = 0

    # ---- parts ----------------------------------------------------------------------------------------
    def trainable(self) -> nn.ModuleDict:
        """The modules the optimizer updates: the MM-DiT, plus the text encoder when it learns."""
        parts = {"model": self.model}
        if self.text_encoder.trainable:
            parts["text_encoder"] = self.text_encoder
        return nn.ModuleDict(parts)

    def pipeline(self, use_ema: bool = True) -> Pipeline:
        """A sampler over the current (or EMA) weights."""
        source = self.ema if use_ema else self.trainable()
        text = source["text_encoder"] if "text_encoder" in source else self.text_encoder
        return Pipeline(source["model"], text, self.autoencoder, self.bridge, self.schedule, self.cfg.latent_size,
                        self.cfg.bridge.detail_noise, self.cfg.flow.prediction)  # fmt: skip

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
    def stage_losses(self, batch) -> list[tuple[int, int, torch.Tensor]]:
        """(stage, samples, mean loss) per non-empty group."""
        cfg, f = self.cfg, self.cfg.flow
        gen = step_generator(cfg.seed, self.global_rank, self.global_step, self.device)
        cpu_gen = step_generator(cfg.seed, self.global_rank, self.global_step)
        out = []
        for images, captions, k in zip(batch.images, batch.captions, batch.stages):
            if len(captions) == 0:
                continue
            x = group_latents(images, k, cfg.num_stages, batch.pooled, self.autoencoder)
            sample = flow_sample(
                x, k, self.schedule, self.bridge, density=f.timestep_density, logit_mean=f.logit_mean,
                logit_std=f.logit_std, generator=gen, detail=cfg.bridge.detail_noise,
            )  # fmt: skip
            text = self.text_encoder(drop_captions(captions, f.caption_dropout, cpu_gen)).to(self.device)
            output = self.model(sample.z, sample.timestep, text.states, text.mask, text.pooled, stage=k)
            v = velocity_from_output(output, sample.z, k, sample.timestep, self.schedule, f.prediction)
            out.append((k, len(captions), F.mse_loss(v.float(), sample.target.float())))
        return out

    def training_step(self, batch, batch_idx):
        per_stage = self.stage_losses(batch)
        total = sum(n for _, n, _ in per_stage)
        loss = sum(n * loss_k for _, n, loss_k in per_stage) / total
        bad = self._first_nonfinite([loss_k for _, _, loss_k in per_stage], [k for k, _, _ in per_stage])
        if bad is not None:
            return self._nonfinite(f"loss in stage {bad}")
        for k, n, loss_k in per_stage:
            self.log(f"train/loss_stage{k}", loss_k, batch_size=n, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=total, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=total)
        self.tokens_in_batch = sum(n * image_tokens(self.cfg, k) for k, n, _ in per_stage)
        self.flops_per_batch = 3 * sum(n * forward_cost(self.cfg, k).total for k, n, _ in per_stage)
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
