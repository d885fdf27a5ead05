"""Reading the checkpoints and weights users hand the kit, without running anything they contain.

Files are data. Weights come from safetensors or from `torch.load(weights_only=True)`. An FSDP checkpoint
(a torch.distributed.checkpoint directory) is a pickled `.metadata` index plus shard files; torch's own reader
unpickles that index, and every non-tensor item, with no restriction, so a crafted directory runs code on
load. Here the index is read by an unpickler that admits only the checkpoint format's own record classes,
tensors are read shard by shard with `torch.load(weights_only=True)`, and non-tensor items are never read.
Every failure is one `ConfigError` line naming the file.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ..config import ConfigError

_DCP = "torch.distributed.checkpoint"
# Everything a DCP `.metadata` written by torch 2.x refers to (checked against real FSDP checkpoints).
SAFE_METADATA_GLOBALS = {
    *((f"{_DCP}.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("collections", "OrderedDict"),
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Refuses every global outside SAFE_METADATA_GLOBALS (and torch dtypes), as weights_only does for tensors."""

    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def read_dcp_metadata(directory: Path, key: str = "--ckpt"):
    """The checkpoint index of a DCP directory, read without trusting it."""
    try:
        with open(directory / ".metadata", "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError, TypeError) as err:
        raise ConfigError(key, f"{directory} is not a readable FSDP checkpoint ({_first_line(err)})") from None
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata):
        raise ConfigError(key, f"{directory}/.metadata is not a checkpoint index")
    return metadata


def read_dcp_tensors(directory: Path, wanted: Callable[[str], bool], key: str = "--ckpt") -> dict[str, torch.Tensor]:
    """Full tensors of the DCP directory whose names `wanted` accepts, assembled from their shards."""
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    metadata = read_dcp_metadata(directory, key)
    out: dict[str, torch.Tensor] = {}
    root = directory.resolve()
    for fqn, item in metadata.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata) or not wanted(fqn):
            continue
        full = torch.empty(tuple(item.size), dtype=item.properties.dtype)
        for index, chunk in enumerate(item.chunks):
            info = metadata.storage_data.get(MetadataIndex(fqn, chunk.offsets, index))
            if info is None or getattr(info, "transform_descriptors", None):
                raise ConfigError(key, f"{directory}: {fqn} is stored in a form this reader does not take")
            shard = (root / info.relative_path).resolve()
            if root not in shard.parents:
                raise ConfigError(key, f"{directory}: {fqn} points outside the checkpoint directory")
            try:
                with open(shard, "rb") as handle:
                    handle.seek(info.offset)
                    piece = torch.load(io.BytesIO(handle.read(info.length)), weights_only=True, map_location="cpu")
            except Exception as err:  # noqa: BLE001 - any failure of a shard means the directory is unreadable
                raise ConfigError(key, f"{directory}: cannot read {fqn} ({_first_line(err)})") from None
            region = full
            for dim, (start, size) in enumerate(zip(chunk.offsets, chunk.sizes)):
                region = region.narrow(dim, start, size)
            region.copy_(piece.reshape(tuple(chunk.sizes)))
        out[fqn] = full
    return out


def load_torch_file(path: Path, key: str = "--ckpt") -> dict:
    """A `torch.save` archive with weights_only=True (memory-mapped: tensors are read when used)."""
    if not zipfile.is_zipfile(path):
        raise ConfigError(key, f"{path} is not a PyTorch checkpoint (not a torch.save zip archive)")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged archive
        raise ConfigError(key, f"{path} is not a readable PyTorch checkpoint ({_first_line(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(key, f"{path} holds a {type(data).__name__}, not a checkpoint dictionary")
    return data


def load_safetensors(path: Path, key: str = "--ckpt") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(key, f"{path} is not a readable safetensors file ({_first_line(err)})") from None


def check_resumable(path: Path, key: str = "trainer.resume") -> None:
    """Refuse, before the trainer reads it, a resume target that is not a checkpoint: a file must be a
    torch.save archive, a directory an FSDP checkpoint with a sound index."""
    if path.is_dir():
        read_dcp_metadata(path, key)
    elif not zipfile.is_zipfile(path):
        raise ConfigError(key, f"{path} is not a PyTorch checkpoint (not a torch.save zip archive)")


@contextmanager
def safe_dcp_loading():
    """While active, torch.distributed.checkpoint reads indexes with the restricted unpickler above and
    non-tensor items (optimizer hyperparameters and the like, which it stores pickled) with
    torch.load(weights_only=True) instead of unrestricted unpickling. Lightning's FSDP resume goes through
    torch's reader, which takes no such option, so the two methods are swapped for the duration."""
    from torch.distributed.checkpoint import default_planner, filesystem

    def read_metadata(reader, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_dcp_metadata(Path(reader.path), "trainer.resume")
        if getattr(metadata, "storage_meta", None) is None:  # as torch's own reader does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = reader.load_id
        return metadata

    def load_bytes(planner, read_item, value):
        obj = torch.load(value, weights_only=True)
        if planner.flatten_state_dict:
            default_planner.set_element(planner.original_state_dict, planner.mappings[read_item.dest_index.fqn], obj)
        else:
            planner.state_dict[read_item.dest_index.fqn] = obj

    saved = filesystem.FileSystemReader.read_metadata, default_planner.DefaultLoadPlanner.load_bytes
    filesystem.FileSystemReader.read_metadata = read_metadata
    default_planner.DefaultLoadPlanner.load_bytes = load_bytes
    try:
        yield
    finally:
        filesystem.FileSystemReader.read_metadata, default_planner.DefaultLoadPlanner.load_bytes = saved


CHECKPOINT_NAME = re.compile(r"^step(\d+)\.ckpt$")


def step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete step checkpoints in `folder`, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("step*.ckpt") if (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found)


def weights_step(path: Path) -> int | None:
    """The training step a weights file or step checkpoint holds (safetensors metadata or the file's name)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                step = (handle.metadata() or {}).get("step")
        except (SafetensorError, OSError):
            return None
        return int(step) if step is not None and step.isdigit() else None
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def run_weights_file(run_dir: Path, key: str = "--ckpt") -> Path:
    """The weights a run directory stands for: whichever of weights.safetensors and its newest step checkpoint
    holds the later step (weights.safetensors on a tie: no checkpoint to open), so a resumed run's newer
    checkpoints are not shadowed by an older weights file."""
    candidates = [(s, 1, p) for s, p in step_checkpoints(run_dir / "checkpoints")]
    weights = run_dir / "weights.safetensors"
    if weights.is_file():
        candidates.append((weights_step(weights) or -1, 2, weights))
    if not candidates:
        raise ConfigError(key, f"{run_dir} holds neither weights.safetensors, model.safetensors nor "
                               "checkpoints/step*.ckpt")  # fmt: skip
    return max(candidates)[2]


def read_weights(path: Path, key: str = "--ckpt") -> tuple[dict[str, torch.Tensor], Path]:
    """(flat state dict, run directory) from a run directory, a model directory, weights.safetensors, a .ckpt
    file or a distributed (FSDP) .ckpt directory. Lightning checkpoints give their EMA weights."""
    if path.is_dir() and not (path / ".metadata").exists():  # a model directory (`nami export`) or a run one
        if (path / "model.safetensors").is_file():
            return read_weights(path / "model.safetensors", key)
        return read_weights(run_weights_file(path, key), key)
    if not path.exists():
        raise ConfigError(key, f"not found: {path}")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if path.suffix == ".safetensors":
        return load_safetensors(path, key), path.parent
    if path.is_dir():
        names = read_dcp_tensors(path, lambda fqn: fqn.startswith("state_dict."), key)
        state = {fqn[len("state_dict.") :]: t for fqn, t in names.items()}
    else:
        state = load_torch_file(path, key).get("state_dict")
        if not isinstance(state, dict):
            raise ConfigError(key, f"{path} is a PyTorch file but not a Lightning checkpoint (no state_dict)")
    if any(k.startswith("ema.") for k in state):
        weights = {k[len("ema.") :]: v for k, v in state.items() if k.startswith("ema.")}
    else:
        weights = {k: v for k, v in state.items() if k.startswith(("model.", "text_encoder."))}
    return weights, run_dir


def load_weights_into(part: nn.Module, state: dict[str, torch.Tensor], source: Path, what: str, key: str = "--ckpt"):
    """Load `state` into `part` after checking every name and shape: a checkpoint of another size is one line
    naming the first tensor that differs, not a size-mismatch traceback."""
    own = part.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ConfigError(key, f"{source} does not fit this config's {what} "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")  # fmt: skip
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ConfigError(key, f"{source} does not fit this config's {what}: {name} is "
                                   f"{tuple(state[name].shape)} there, {tuple(tensor.shape)} here "
                                   "(another model.width / heads / blocks?)")  # fmt: skip
    part.load_state_dict(state)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
