"""Bookkeeping of `nami ablate` under DIR: what each arm x seed (and each arm's timing) was, how far it got,
and whether it is done. Every record is JSON written through a temporary file and os.replace, so a kill leaves
the previous version or the new one, never half a file; a record with "done": true is a finished unit of work.

    DIR/plan.json                the latest invocation (arms, seeds, budget, reference)
    DIR/arms/<arm>-seed<s>.json  spec, then bridges / train / eval results as they finish, then done
    DIR/timing/<arm>.json        spec, then the serial timing pass's sampling and training benches, then done
    DIR/logs/<unit>.log          the worker's output (appended across resumes)
    DIR/runs/<arm>-seed<s>/      ordinary run directories (checkpoints, tb, weights, eval.json, ...)
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from ..config import ConfigError

PLAN_FILE = "plan.json"


def write_json(path: Path, data: dict) -> None:
    """Atomically replace `path` with `data` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(str(path), f"not valid JSON ({err.msg}); not written by nami ablate") from None


def first_difference(recorded: dict, current: dict, prefix: str = "") -> str | None:
    """The first key whose value differs between two specs, as `key: recorded -> current`."""
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found = first_difference(old, new, f"{prefix}{key}.")
            if found:
                return found
        elif old != new:
            return f"{prefix}{key}: {old!r} -> {new!r}"
    return None


def start_record(path: Path, spec: dict) -> dict:
    """The record at `path` if it holds `spec`, else a new one; a record made with another spec is refused."""
    record = read_json(path)
    if record is None:
        record = {"spec": spec}
        write_json(path, record)
        return record
    difference = first_difference(record.get("spec", {}), spec)
    if difference:
        raise ConfigError("--out", f"{path} was made with another plan ({difference}); give another "
                                   "--out, or remove that record to redo it")  # fmt: skip
    return record


def prepare_out(out: Path) -> None:
    """DIR must be new, empty, or made by nami ablate: other contents are never written over."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / PLAN_FILE).is_file():
        raise ConfigError("--out", f"{out} holds files that nami ablate did not write; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


@contextmanager
def exclusive(lock_path: Path, what: str):
    """Hold an exclusive lock on `lock_path` (the kernel drops it when the process dies), or refuse."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError("--out", f"{what} is in use by {holder}; wait for it or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
