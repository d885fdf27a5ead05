"""Reading the checkpoints and weights users hand the kit without running anything they contain, and writing
files and directories so that a crash never leaves half of one.

Files are data. Weights come from safetensors or from `torch.load(weights_only=True)`. An FSDP checkpoint
(a torch.distributed.checkpoint directory) is a pickled `.metadata` index plus shard files; torch's own reader
unpickles that index, and every non-tensor item, with no restriction, so a crafted directory runs code on
load. Here the index is read by an unpickler that admits only the checkpoint format's own record classes,
tensors are read shard by shard with `torch.load(weights_only=True)`, and non-tensor items are never read.
Every failure is one `ConfigError` line naming the file.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
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
    """Full tensors of the DCP directory whose names `wanted` accepts, assembled from their shards.

    The index is a claim, checked before anything is allocated: every chunk lies inside its tensor, its bytes
    lie inside its shard file, and a tensor's declared size is backed by that many bytes of its chunks, so a
    1 KB index cannot ask for gigabytes (or terabytes)."""
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    metadata = read_dcp_metadata(directory, key)
    out: dict[str, torch.Tensor] = {}
    root = directory.resolve()
    for fqn, item in metadata.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata) or not wanted(fqn):
            continue
        size, dtype = tuple(int(n) for n in item.size), item.properties.dtype
        pieces = [_dcp_chunk(directory, root, metadata, MetadataIndex(fqn, chunk.offsets, index), chunk, size,
                             dtype, key) for index, chunk in enumerate(item.chunks)]  # fmt: skip
        declared = math.prod(size) * dtype.itemsize
        if declared > sum(length for _, _, length in pieces):
            raise ConfigError(key, f"{directory}: {fqn} declares {list(size)} ({declared:,} bytes) but its chunks "
                                   "hold fewer bytes")  # fmt: skip
        full = torch.empty(size, dtype=dtype)
        for chunk, shard, length in pieces:
            try:
                with open(shard, "rb") as handle:
                    handle.seek(chunk[1])
                    piece = torch.load(io.BytesIO(handle.read(length)), weights_only=True, map_location="cpu")
                region = full
                for dim, (start, extent) in enumerate(zip(chunk[0].offsets, chunk[0].sizes)):
                    region = region.narrow(dim, start, extent)
                region.copy_(piece.reshape(tuple(chunk[0].sizes)))
            except Exception as err:  # noqa: BLE001 - any failure of a shard means the directory is unreadable
                raise ConfigError(key, f"{directory}: cannot read {fqn} ({_first_line(err)})") from None
        out[fqn] = full
    return out


def _dcp_chunk(directory, root, metadata, index, chunk, size, dtype, key):
    """((chunk, offset), shard path, byte length) of one chunk, after checking it against its tensor and file."""
    fqn = index.fqn
    info = metadata.storage_data.get(index)
    if info is None or getattr(info, "transform_descriptors", None):
        raise ConfigError(key, f"{directory}: {fqn} is stored in a form this reader does not take")
    offsets, sizes = tuple(int(n) for n in chunk.offsets), tuple(int(n) for n in chunk.sizes)
    if len(offsets) != len(size) or len(sizes) != len(size) or any(
            o < 0 or n < 0 or o + n > s for o, n, s in zip(offsets, sizes, size)):  # fmt: skip
        raise ConfigError(key, f"{directory}: a chunk of {fqn} lies outside the tensor's {list(size)}")
    shard = (root / info.relative_path).resolve()
    if root not in shard.parents:
        raise ConfigError(key, f"{directory}: {fqn} points outside the checkpoint directory")
    available = shard.stat().st_size if shard.is_file() else -1
    if info.offset < 0 or info.length < math.prod(sizes) * dtype.itemsize or info.offset + info.length > available:
        raise ConfigError(key, f"{directory}: a chunk of {fqn} claims bytes its file {shard.name} does not hold")
    return (chunk, info.offset), shard, info.length


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


def load_weights_into(part: nn.Module, state: dict[str, torch.Tensor], source: Path, what: str, key: str = "--ckpt"):
    """Load `state` into `part` after checking every name, shape and value: a checkpoint of another size is one
    line naming the first tensor that differs, not a size-mismatch traceback; weights that are not floating
    point (bool, integers) or hold NaN or infinity are refused (they would sample black images without a word)."""
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
        check_finite(state[name], f"{what}.{name}", source, key, floating=tensor.is_floating_point())
    part.load_state_dict(state)


def check_finite(tensor: torch.Tensor, name: str, source, key: str, floating: bool = True) -> None:
    """A weight tensor must be floating point (where its place is) and hold only finite values."""
    if floating and not tensor.is_floating_point():
        raise ConfigError(key, f"{source}: {name} holds {str(tensor.dtype).removeprefix('torch.')} values, not "
                               "floating-point weights")  # fmt: skip
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ConfigError(key, f"{source}: {name} holds NaN or infinite values; refusing to load it")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


# ---- writing ------------------------------------------------------------------------------------------------
def refuse_nonempty(out: Path, key: str) -> None:
    """The one rule for outputs that must not replace anything: `out` is new, or an empty directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(key, f"{out} already exists and is not empty; name a new directory")


@contextmanager
def directory_in_place(out: Path, key: str):
    """Yields a hidden sibling directory to fill; on success it is renamed to `out` (new or empty), on any
    failure removed, so no half-written directory is ever visible under `out`. An OSError (a full disk, a
    read-only file system) becomes one ConfigError line naming `out`."""
    out = Path(out)
    refuse_nonempty(out, key)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # a leftover of this process id's earlier crash
        partial.mkdir()
        yield partial
        os.rename(partial, out)  # POSIX: replaces `out` only if it is an empty directory
    except (OSError, SafetensorError) as err:  # a full disk, a read-only file system, a file-size limit
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigError(key, f"cannot write {out} ({write_failure(err)})") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """`write(partial)` into a hidden sibling of `path`, then rename it over `path`: readers see the old file or
    the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_failure(err: BaseException) -> str:
    """Why a write failed, in a few words (errno's text: "No space left on device", "File too large", ...).
    torch.save's archive writer reports a failed write without the errno ("unexpected pos ..."), so that case
    says what it can."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = _first_line(err)
    if "inline_container" in text or "unexpected pos" in text or "file write failed" in text:
        return "the write stopped short: a full disk, a file-size limit or a read-only directory"
    return text


def numbered_directory(base: Path, key: str = "--out") -> Path:
    """base/0001, base/0002, ...: the first number above every existing one, made now (before any work, so a bad
    `base` costs nothing), so earlier outputs (samples, exports) stay as they were and two calls never share a
    directory."""
    base = Path(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(key, f"cannot make the output directory {base} ({err.strerror or err})") from None
    taken = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    number = max(taken, default=0) + 1
    while True:
        path = base / f"{number:04d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another call took it in the meantime
            number += 1
        except OSError as err:  # a read-only or full file system under an existing `base`
            raise ConfigError(key, f"cannot make the output directory {path} ({err.strerror or err})") from None
