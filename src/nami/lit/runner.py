"""What `nami pretrain-bridge` and `nami train` run: build modules, data and a Trainer from the config.

A run lives in runs/<name>/ (trainer.default_root_dir / name): checkpoints/, tb/ (TensorBoard), samples/,
bridges.safetensors, bridge_report.json, weights.safetensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ..bridges import save_bridges
from ..config import ConfigError, NamiConfig, to_dict
from ..models import image_tokens
from ..parts import build_parts, fitted_bridge
from .bridge_pretrain import BridgePretrainModule
from .callbacks import ExportWeights, KeysRecorder, SampleGrid, SkipCounts, throughput_monitor
from .joint_flow import JointFlowModule
from .precision import autocast_dtype, resolve_precision
from .strategies import PARTIAL, build_strategy, checkpoint_plugins

CHECKPOINT_NAME = re.compile(r"^step(\d+)\.ckpt$")


def run_dir(cfg: NamiConfig) -> Path:
    return Path(cfg.trainer.default_root_dir) / cfg.name


def check_device(cfg: NamiConfig) -> None:
    """Refuse, before any compute, a GPU config on a machine without CUDA."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", f"{cfg.name} needs CUDA GPUs and this machine has none")


def _trainer(cfg: NamiConfig, logger, callbacks, find_unused: bool = False, **overrides) -> L.Trainer:
    t = cfg.trainer
    kwargs = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        strategy=build_strategy(cfg, find_unused), plugins=checkpoint_plugins(cfg), logger=logger,
        callbacks=callbacks, log_every_n_steps=t.log_every_n_steps, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False, deterministic=t.deterministic or None,
        default_root_dir=str(run_dir(cfg)),
    )  # fmt: skip
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def _datamodule(cfg: NamiConfig, joint: bool):
    from data_modules import ShardDataModule

    data = ShardDataModule(cfg, joint=joint)
    data.setup("fit")  # resolve data.shards now: a bad path stops before any model is built
    return data


# ---- BridgeFlow pretraining -------------------------------------------------------------------------------
def pretrain_bridges(cfg: NamiConfig) -> dict:
    """Fit the configured bridge kind; write bridges.safetensors and bridge_report.json. Returns the report."""
    check_device(cfg)
    data = _datamodule(cfg, joint=False)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = BridgePretrainModule(cfg, build_parts(cfg, fitted=False, networks=False))
    out = run_dir(cfg)
    logger = TensorBoardLogger(str(out), name="", version="tb-bridge", default_hp_metric=False)
    trainer = _trainer(
        cfg, logger, [], max_epochs=1, max_steps=-1, limit_train_batches=module.total_batches,
        precision="32-true", enable_checkpointing=False,
    )  # fmt: skip
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
def find_checkpoint(cfg: NamiConfig) -> str | None:
    """trainer.resume: None (start fresh), 'last' (newest complete step checkpoint) or a path."""
    resume = cfg.trainer.resume
    if not resume:
        return None
    if resume != "last":
        if not Path(resume).exists():
            raise ConfigError("trainer.resume", f"checkpoint not found: {resume}")
        return resume
    folder = run_dir(cfg) / "checkpoints"
    steps = [(int(m.group(1)), p) for p in folder.glob("step*.ckpt") if (m := CHECKPOINT_NAME.match(p.name))]
    if not steps:
        raise ConfigError("trainer.resume", f"no checkpoint to resume under {folder}")
    return str(max(steps)[1])


def stage_can_be_empty(module: JointFlowModule, batch_size: int) -> bool:
    """Whether some batch may lack the full-depth stage (DDP must then look for unused parameters)."""
    from data_modules import stage_counts

    return any(stage_counts(batch_size, r)[-1] == 0 for r in module.flow.mix.all_ratios())


def train(cfg: NamiConfig, module_cls: type[JointFlowModule] = JointFlowModule) -> Path:
    """Joint multi-resolution flow training (resumable); returns the run directory."""
    check_device(cfg)
    ckpt_path = find_checkpoint(cfg)
    out = run_dir(cfg)
    bridge = fitted_bridge(cfg, out)  # a missing bridge stops before the data or the model is touched
    data = _datamodule(cfg, joint=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = module_cls(cfg, build_parts(cfg, bridge=bridge))
    logger = TensorBoardLogger(str(out), name="", version="tb", default_hp_metric=False)
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="step{step:08d}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.trainer.checkpoint_every, save_top_k=cfg.trainer.keep_checkpoints,
        monitor="step", mode="max", save_last=False,
    )  # fmt: skip
    dtype = autocast_dtype(cfg.trainer.precision, cfg.trainer.accelerator)
    grid = SampleGrid(out / "samples", cfg.log.sample_prompts, cfg.sampler.steps, cfg.sampler.guidance,
                      cfg.log.sample_seed, cfg.log.sample_every, dtype)  # fmt: skip
    tokens = [image_tokens(cfg, k) for k in range(cfg.num_stages)]
    callbacks = [checkpoints, throughput_monitor(tokens, cfg.trainer.log_every_n_steps), SkipCounts(), grid,
                 FinalCheckpoint(out / "checkpoints"), ExportWeights(out / "weights.safetensors")]  # fmt: skip
    if cfg.log.record_keys:
        callbacks.append(KeysRecorder(out))
    find_unused = stage_can_be_empty(module, cfg.data.batch_size)
    trainer = _trainer(cfg, logger, callbacks, find_unused=find_unused, max_steps=cfg.trainer.max_steps,
                       max_time=cfg.trainer.max_time)  # fmt: skip
    logger.log_hyperparams(to_dict(cfg))
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    if trainer.is_global_zero and bridge.learnable:
        target = out / "bridges.safetensors"
        if not target.exists():  # fitted elsewhere (bridge.weights): keep a copy beside the weights
            save_bridges(bridge, target)
    return out


class FinalCheckpoint(L.Callback):
    """Save a step checkpoint at the end of training unless the periodic one just did."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        path = self.folder / f"step{trainer.global_step:08d}.ckpt"
        if not path.exists() and not Path(str(path) + PARTIAL).exists():
            trainer.save_checkpoint(path, weights_only=False)
