"""Lightning strategies from `trainer.strategy`, with checkpoints that a kill mid-save cannot corrupt.

auto: single device. ddp: DistributedDataParallel (NCCL on GPUs, gloo on CPU). fsdp: FSDP2 (`fully_shard`
per block, see JointFlowModule.configure_model) through ModelParallelStrategy, the modern FSDP; Lightning's
`fsdp` strategy wraps FSDP1 and refuses CPU. Multi-node runs use Lightning's usual environment detection
(torchrun / SLURM variables) with `trainer.num_nodes`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from ..artifacts.files import write_failure
from ..artifacts.weights import DCP_META
from ..errors import RunStopped

PARTIAL = ".partial"


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (a full disk, a read-only directory, a file-size limit)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into `<path>.partial` in the same directory, fsync, then rename over `<path>`.

    Lightning's own save goes through a temp file in /tmp and `shutil.move`, which is a copy (not atomic)
    when /tmp and the run directory are different file systems.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: leave it to fsspec's transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        partial = path.with_name(path.name + PARTIAL)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as handle:  # a stale partial of a failed save is replaced
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            partial.unlink(missing_ok=True)
            raise CheckpointWriteError(f"could not write the checkpoint {path} ({write_failure(err)}); the "
                                       "previous checkpoints are intact: free space and resume with "
                                       "trainer.resume=last") from None


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """ModelParallelStrategy whose distributed (directory) checkpoints appear only once complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(path.name + PARTIAL)
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        self.barrier()
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier()
        if self.global_rank == 0:
            if path.exists():  # overwriting (same step saved twice): move the old one aside first
                stale = path.with_name(path.name + ".stale")
                os.replace(path, stale)
                os.replace(partial, path)
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            else:
                os.replace(partial, path)
        self.barrier()

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        """Lightning's distributed load, with torch's reader kept from unpickling anything (see
        nami.artifacts.files.safe_dcp_loading); the non-tensor rest (meta.pt) is read weights_only. A checkpoint
        that leaves out frozen base tensors (JointFlowModule.checkpoint_omits) restores the rest (`_load_partial`)."""
        from torch.distributed.checkpoint.api import CheckpointException

        from ..artifacts.files import read_dcp_metadata, safe_dcp_loading
        from ..config import ConfigError

        path = Path(self.broadcast(str(checkpoint_path)))
        try:
            with safe_dcp_loading():
                omits = getattr(self.lightning_module, "checkpoint_omits", set)()
                if omits and path.is_dir():
                    stored = {fqn[len("state_dict.") :] for fqn in read_dcp_metadata(path).state_dict_metadata
                              if fqn.startswith("state_dict.")}  # fmt: skip
                    return self._load_partial(path, stored, omits)
                return super().load_checkpoint(checkpoint_path, weights_only=True)
        except CheckpointException as err:  # a BaseException in torch: say what was refused, in one line
            failures = [str(f).strip().splitlines()[-1] for f in getattr(err, "failures", {}).values()]
            reason = failures[0] if failures else str(err).splitlines()[0]
            raise ConfigError("trainer.resume", f"{checkpoint_path} cannot be loaded safely ({reason})") from None

    def _load_partial(self, path: Path, stored: set[str], omits: set[str]) -> dict[str, Any]:
        """Lightning's sharded load over the tensors the checkpoint holds: the module's tensors it lacks must be
        ones it leaves out on purpose (already loaded from trainer.init_from); the optimizer states, then the
        non-tensor rest (meta.pt, weights_only)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        from ..config import ConfigError

        module = self.lightning_module
        state = get_model_state_dict(module)
        lacking = set(state) - stored
        if lacking - omits:
            raise ConfigError("trainer.resume", f"{path} lacks tensors of this model: {sorted(lacking - omits)[:3]}")
        held = {k: v for k, v in state.items() if k in stored}
        dcp.load({"state_dict": held}, checkpoint_id=path)
        module.load_state_dict(held, strict=False)
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            optim_state = {key: get_optimizer_state_dict(module, optimizer)}
            dcp.load(optim_state, checkpoint_id=path)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=optim_state[key],
                                     options=StateDictOptions(cpu_offload=True))  # fmt: skip
        return torch.load(path / DCP_META, weights_only=True)

    def remove_checkpoint(self, filepath) -> None:
        if self.global_rank == 0:
            fs = get_filesystem(filepath)
            if fs.exists(filepath):
                fs.rm(filepath, recursive=True)


def build_strategy(cfg, find_unused_parameters: bool = False):
    """The Lightning strategy object for `trainer.strategy`; checkpoints are written atomically by all."""
    kind = cfg.trainer.strategy
    if kind == "ddp":
        return DDPStrategy(find_unused_parameters=find_unused_parameters, checkpoint_io=AtomicCheckpointIO())
    if kind == "fsdp":
        world = cfg.trainer.num_nodes * cfg.trainer.devices  # pure data parallelism over every rank
        return AtomicModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)
    return "auto"


def checkpoint_plugins(cfg) -> list:
    """Trainer plugins: the atomic checkpoint IO where the strategy does not carry its own."""
    return [AtomicCheckpointIO()] if cfg.trainer.strategy == "auto" else []
