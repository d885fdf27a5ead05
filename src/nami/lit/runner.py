"""What `nami pretrain-bridge` and `nami train` run: modules, data and a Trainer from the config, in a claimed
run directory (`nami.artifacts.RunDir`: its layout, the rules for reusing one, the lock held for the run's life).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from .. import signals
from ..artifacts import RunDir, fitted_bridge
from ..artifacts.run_dir import launched_by_rank_zero
from ..artifacts.export import export_at_end_of_training
from ..artifacts.layout import TENSORBOARD, TENSORBOARD_BRIDGE
from ..artifacts.weights import init_directory, load_initial_weights
from ..bridges import save_bridges
from ..config import ConfigError, NamiConfig, to_dict
from ..errors import Interrupted
from ..models import image_tokens
from ..parts import build_parts
from ..sampling.precision import resolve_precision
from .bridge_pretrain import BridgePretrainModule
from .callbacks import (
    EvalCallback,
    ExportWeights,
    KeysRecorder,
    SampleGrid,
    SkipCounts,
    StepCheckpoints,
    StepProgressBar,
    throughput_monitor,
)
from .joint_flow import JointFlowModule, check_optimizer
from .stopping import StopOnSignal, cluster_plugins
from .strategies import build_strategy, checkpoint_plugins


def check_device(cfg: NamiConfig) -> None:
    """Refuse, before any compute, a GPU config on a machine without CUDA."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", f"{cfg.name} needs CUDA GPUs and this machine has none "
                                                 "(trainer.accelerator=cpu runs it on the CPU)")  # fmt: skip


def check_training(cfg: NamiConfig) -> None:
    """Refuse, before any compute, what a training step cannot run: the optimizer (`check_optimizer`), LoRA without
    a base to adapt, and frozen bfloat16 base weights without autocast (a float32 activation meets a bfloat16 weight
    in every frozen layer)."""
    check_optimizer(cfg)
    if cfg.finetune.lora.rank > 0 and not cfg.trainer.init_from:
        raise ConfigError("finetune.lora.rank", "LoRA adapts a trained model: set trainer.init_from=MODEL_DIR (the "
                                                "base the adapters train on)")  # fmt: skip
    if cfg.finetune.lora.rank > 0:  # targets that match no layer: found on the meta device, before any directory
        from ..models import build_model
        from ..models.lora import AdapterSpec

        with torch.device("meta"):
            AdapterSpec.from_config(cfg.finetune.lora, cfg.model, build_model(cfg))
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if cfg.finetune.base_dtype == "bfloat16" and not precision.endswith("-mixed"):
        raise ConfigError("finetune.base_dtype", f"bfloat16 base weights need autocast: trainer.precision=bf16-mixed "
                                                 f"(this run resolves to {precision})")  # fmt: skip


class _NoLitLoggerTip(logging.Filter):
    """Lightning advertises a cloud logger at every Trainer start (an info line of its logger connector)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Keep Lightning's console to what concerns the run: no advertisement line, and no warning that the module
    holds submodules in eval mode (the frozen bridge is, on purpose)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoLitLoggerTip) for f in logger.filters):
            logger.addFilter(_NoLitLoggerTip())
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def trainer_for(cfg: NamiConfig, run: RunDir | None, logger, callbacks, find_unused: bool = False,
                **overrides) -> L.Trainer:  # fmt: skip
    """The one place a Trainer is put together from `trainer.*` (accelerator, devices, nodes, precision,
    strategy with atomic checkpoints, logging); `overrides` are Trainer arguments for one use."""
    t = cfg.trainer
    quiet_lightning()
    kwargs = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        strategy=build_strategy(cfg, find_unused), plugins=checkpoint_plugins(cfg) + cluster_plugins(),
        logger=logger,
        callbacks=callbacks, log_every_n_steps=t.log_every_n_steps, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False, deterministic=t.deterministic or None,
        default_root_dir=str(run.path) if run else None, enable_checkpointing=False,  # StepCheckpoints does
        enable_model_summary=False,
    )  # fmt: skip
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def _usable_shards(cfg: NamiConfig):
    """data.shards resolved, checked and probed for one usable sample: bad inputs stop before any model work."""
    from data_modules import usable_shards

    return usable_shards(cfg)


# ---- BridgeFlow pretraining -------------------------------------------------------------------------------
@dataclass
class BridgeFit:
    """What `pretrain_bridges` did: the run directory it wrote into and the held-out report."""

    run: RunDir
    report: dict


def pretrain_bridges(cfg: NamiConfig) -> BridgeFit:
    """Fit the configured bridge kind; write bridges.safetensors and bridge_report.json into the run directory."""
    check_device(cfg)
    from data_modules import ShardDataModule

    data = ShardDataModule(cfg, joint=False, shards=_usable_shards(cfg))  # bad shards stop before anything is written
    run = RunDir.claim(cfg, training=False)
    with run.lock():
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = BridgePretrainModule(cfg, build_parts(cfg, fitted=False, networks=False,
                                                       encoders=not cfg.data.precomputed))  # fmt: skip
        logger = TensorBoardLogger(str(run.path), name="", version=TENSORBOARD_BRIDGE, default_hp_metric=False)
        trainer = trainer_for(cfg, run, logger, [], max_epochs=1, max_steps=-1,
                              limit_train_batches=module.total_batches, precision="32-true")  # fmt: skip
        report: dict = {}

        class _Report(L.Callback):  # the report all-reduces: compute it while every rank is still in the run
            def on_train_end(self, trainer, pl_module):
                report.update(pl_module.report())

        trainer.callbacks.append(_Report())
        trainer.fit(module, datamodule=data)
        if trainer.is_global_zero:  # a refit before any training replaces the earlier fit (claim refuses after)
            save_bridges(module.bridge, run.bridges)
            run.bridge_report.write_text(json.dumps(report, indent=2) + "\n")
    return BridgeFit(run, report)


# ---- joint flow training ----------------------------------------------------------------------------------
def stage_can_be_empty(module: JointFlowModule, batch_size: int) -> bool:
    """Whether some batch may lack the full-depth stage (DDP must then look for unused parameters)."""
    from data_modules import stage_counts

    return any(stage_counts(batch_size, r)[-1] == 0 for r in module.flow.mix.all_ratios())


def train(cfg: NamiConfig, module_cls: type[JointFlowModule] = JointFlowModule) -> RunDir:
    """Joint multi-resolution flow training (resumable); returns the run directory. A stop signal (SIGTERM,
    SIGUSR1) ends it with `Interrupted` after the current optimizer step and its checkpoint (nami.lit.stopping)."""
    with signals.handling_stop_signals():
        try:
            return _train(cfg, module_cls)
        except Interrupted:
            _outlive_parent_rank()
            raise


def _outlive_parent_rank(timeout: float = 30.0) -> None:
    """A rank that Lightning's launcher started from rank 0's process exits after rank 0: Lightning's watchdog
    there SIGKILLs every process as soon as one child ends with a non-zero status, which would cut rank 0's own
    stop (its lock, its exit status) short."""
    if not launched_by_rank_zero():
        return
    parent = os.getppid()
    deadline = time.monotonic() + timeout
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.1)


def _train(cfg: NamiConfig, module_cls: type[JointFlowModule]) -> RunDir:
    check_device(cfg)
    check_training(cfg)
    from data_modules import ShardDataModule

    shards = _usable_shards(cfg)  # bad shards stop here, before anything is written
    run = RunDir.claim(cfg, training=True)
    with run.lock():
        ckpt_path = run.resume_checkpoint(cfg.trainer.resume)
        # the bridge fitted for this run, or the one beside trainer.init_from's weights; a missing bridge stops
        # here, before the model is built
        bridge = fitted_bridge(cfg, init_directory(cfg) or run.path)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        # data.precomputed: stored latents and text states, so no frozen encoder is built or loaded
        parts = build_parts(cfg, bridge=bridge, encoders=not cfg.data.precomputed)
        data = ShardDataModule(cfg, mix=parts.flow.mix, shards=shards)  # batches split by the flow's stage mix
        unconditional = data.unconditional() if cfg.data.precomputed else None
        module = module_cls(cfg, parts, unconditional=unconditional)
        load_initial_weights(module, cfg)  # trainer.init_from
        trainer = trainer_for(cfg, run, TensorBoardLogger(str(run.path), name="", version=TENSORBOARD,
                                                          default_hp_metric=False),
                              _training_callbacks(cfg, run), find_unused=stage_can_be_empty(module, cfg.data.batch_size),
                              max_steps=cfg.trainer.max_steps, max_time=cfg.trainer.max_time,
                              accumulate_grad_batches=cfg.trainer.accumulate_grad_batches)  # fmt: skip
        trainer.logger.log_hyperparams(to_dict(cfg))
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
        if trainer.is_global_zero and bridge.learnable and not run.bridges.exists():
            save_bridges(bridge, run.bridges)  # fitted elsewhere (bridge.weights): keep a copy beside the weights
        if trainer.is_global_zero:  # the self-describing model directory, RUN/export/NNNN
            # a bridge that trained is read back from the last checkpoint (its EMA), not this live copy
            export_at_end_of_training(run, cfg, None if module.flow.bridge_trains else bridge)
    return run


def _training_callbacks(cfg: NamiConfig, run: RunDir) -> list[L.Callback]:
    t = cfg.trainer
    @functools.cache
    def tokens(size: tuple[int, int] | None) -> list[int]:  # per stage, for a batch's bucket (None: the square)
        return [image_tokens(cfg, k, size) for k in range(cfg.num_stages)]

    callbacks = [StepCheckpoints(run.checkpoints, t.checkpoint_every, t.keep_checkpoints),
                 throughput_monitor(tokens, t.log_every_n_steps), SkipCounts(t.log_every_n_steps),
                 SampleGrid(run.samples, cfg.log.sample_prompts, cfg.log.sample_seed, cfg.log.sample_every),
                 ExportWeights(run.weights), StepProgressBar()]  # fmt: skip
    if cfg.eval.every_n_steps:  # GenEval-Shapes during training; with keep_best, checkpoints/best.ckpt
        best_dir = run.checkpoints if cfg.eval.keep_best else None
        callbacks.append(EvalCallback(cfg, cfg.eval.every_n_steps, cfg.eval.train_per_category, best_dir))
    callbacks.append(StopOnSignal(callbacks[0]))  # after every end-of-step callback, before KeysRecorder
    if cfg.log.record_keys:
        callbacks.append(KeysRecorder(run.path))
    return callbacks
