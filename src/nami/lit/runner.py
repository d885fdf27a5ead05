"""What `nami pretrain-bridge` and `nami train` run: build modules, data and a Trainer from the config.

A run lives in runs/<name>/ (trainer.default_root_dir / name): checkpoints/, tb/ (TensorBoard), samples/,
bridges.safetensors, bridge_report.json, weights.safetensors, and export/NNNN (model directories, lit/export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from ..bridges import save_bridges
from ..config import ConfigError, NamiConfig, to_dict
from ..models import image_tokens
from ..parts import build_parts, fitted_bridge
from .bridge_pretrain import BridgePretrainModule
from .callbacks import (
    EvalCallback,
    ExportWeights,
    KeysRecorder,
    SampleGrid,
    SkipCounts,
    StepProgressBar,
    throughput_monitor,
)
from .checkpointing import StepCheckpoints, find_checkpoint
from .export import export_at_end_of_training
from .init_from import bridge_dir, load_initial_weights
from .joint_flow import JointFlowModule
from .precision import autocast_dtype, resolve_precision
from .run_dirs import claim_run_dir
from .strategies import build_strategy, checkpoint_plugins


def run_dir(cfg: NamiConfig) -> Path:
    """Where a config's run lives by name (before `claim_run_dir` resolves trainer.run_dir_exists=new)."""
    return Path(cfg.trainer.default_root_dir) / cfg.name


def check_device(cfg: NamiConfig) -> None:
    """Refuse, before any compute, a GPU config on a machine without CUDA."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", f"{cfg.name} needs CUDA GPUs and this machine has none")


def _trainer(cfg: NamiConfig, out: Path, logger, callbacks, find_unused: bool = False, **overrides) -> L.Trainer:
    t = cfg.trainer
    kwargs = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        strategy=build_strategy(cfg, find_unused), plugins=checkpoint_plugins(cfg), logger=logger,
        callbacks=callbacks, log_every_n_steps=t.log_every_n_steps, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False, deterministic=t.deterministic or None,
        default_root_dir=str(out), enable_checkpointing=False,  # StepCheckpoints writes the checkpoints
    )  # fmt: skip
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def _usable_shards(cfg: NamiConfig):
    """data.shards resolved, checked and probed for one usable sample: bad inputs stop before any model work."""
    from data_modules import usable_shards

    return usable_shards(cfg)


# ---- BridgeFlow pretraining -------------------------------------------------------------------------------
def pretrain_bridges(cfg: NamiConfig) -> dict:
    """Fit the configured bridge kind; write bridges.safetensors and bridge_report.json. Returns the report."""
    check_device(cfg)
    from data_modules import ShardDataModule

    data = ShardDataModule(cfg, joint=False, shards=_usable_shards(cfg))
    out = claim_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = BridgePretrainModule(cfg, build_parts(cfg, fitted=False, networks=False,
                                                   encoders=not cfg.data.precomputed))  # fmt: skip
    logger = TensorBoardLogger(str(out), name="", version="tb-bridge", default_hp_metric=False)
    trainer = _trainer(cfg, out, logger, [], max_epochs=1, max_steps=-1, limit_train_batches=module.total_batches,
                       precision="32-true")  # fmt: skip
    report_box: dict = {}

    class _Report(L.Callback):  # the report all-reduces: compute it while every rank is still in the run
        def on_train_end(self, trainer, pl_module):
            report_box.update(pl_module.report())

    trainer.callbacks.append(_Report())
    trainer.fit(module, datamodule=data)
    if trainer.is_global_zero:
        save_bridges(module.bridge, out / "bridges.safetensors")
        (out / "bridge_report.json").write_text(json.dumps(report_box, indent=2) + "\n")
    return report_box


# ---- joint flow training ----------------------------------------------------------------------------------
def stage_can_be_empty(module: JointFlowModule, batch_size: int) -> bool:
    """Whether some batch may lack the full-depth stage (DDP must then look for unused parameters)."""
    from data_modules import stage_counts

    return any(stage_counts(batch_size, r)[-1] == 0 for r in module.flow.mix.all_ratios())


def train(cfg: NamiConfig, module_cls: type[JointFlowModule] = JointFlowModule) -> Path:
    """Joint multi-resolution flow training (resumable); returns the run directory."""
    check_device(cfg)
    shards = _usable_shards(cfg)  # bad shards stop here, before anything is written
    out = claim_run_dir(cfg)
    ckpt_path = find_checkpoint(cfg.trainer.resume, out / "checkpoints")
    bridge = fitted_bridge(cfg, bridge_dir(cfg, out))  # a missing bridge stops before the model is built
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    from data_modules import ShardDataModule

    # data.precomputed: stored latents and text states, so no frozen encoder is built or loaded
    parts = build_parts(cfg, bridge=bridge, encoders=not cfg.data.precomputed)
    data = ShardDataModule(cfg, mix=parts.flow.mix, shards=shards)  # batches split by the flow's own stage mix
    if cfg.data.precomputed:
        module = module_cls(cfg, parts, unconditional=data.unconditional())
    else:
        module = module_cls(cfg, parts)
    load_initial_weights(module, cfg)  # trainer.init_from
    logger = TensorBoardLogger(str(out), name="", version="tb", default_hp_metric=False)
    checkpoints = StepCheckpoints(out / "checkpoints", cfg.trainer.checkpoint_every, cfg.trainer.keep_checkpoints)
    dtype = autocast_dtype(cfg.trainer.precision, cfg.trainer.accelerator)
    grid = SampleGrid(out / "samples", cfg.log.sample_prompts, cfg.sampler.steps, cfg.sampler.guidance,
                      cfg.log.sample_seed, cfg.log.sample_every, dtype)  # fmt: skip
    tokens = [image_tokens(cfg, k) for k in range(cfg.num_stages)]
    callbacks = [checkpoints, throughput_monitor(tokens, cfg.trainer.log_every_n_steps), SkipCounts(), grid,
                 ExportWeights(out / "weights.safetensors"), StepProgressBar()]  # fmt: skip
    if cfg.log.record_keys:
        callbacks.append(KeysRecorder(out))
    if cfg.eval.every_n_steps:  # GenEval-Shapes during training; with keep_best, checkpoints/best.ckpt
        best_dir = out / "checkpoints" if cfg.eval.keep_best else None
        callbacks.append(EvalCallback(cfg, cfg.eval.every_n_steps, cfg.eval.train_per_category, best_dir, dtype))
    find_unused = stage_can_be_empty(module, cfg.data.batch_size)
    trainer = _trainer(cfg, out, logger, callbacks, find_unused=find_unused, max_steps=cfg.trainer.max_steps,
                       max_time=cfg.trainer.max_time)  # fmt: skip
    logger.log_hyperparams(to_dict(cfg))
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    if trainer.is_global_zero and bridge.learnable:
        target = out / "bridges.safetensors"
        if not target.exists():  # fitted elsewhere (bridge.weights): keep a copy beside the weights
            save_bridges(bridge, target)
    if trainer.is_global_zero:  # the self-describing model directory, RUN/export/NNNN (lit/export.py)
        export_at_end_of_training(out, cfg, bridge)
    return out
