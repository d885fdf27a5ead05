"""The lock a process holds on a run directory while it works there (`RunDir.lock`).

Two `nami train` processes on one run name would interleave checkpoints, rename each other's partial files
and mix two runs in one directory. The first process creates `<run>/.lock` exclusively (O_CREAT | O_EXCL) and
writes who it is (pid, host, start time); a second process is refused with one line naming the holder. A lock
whose process is gone (same host, pid no longer alive) is taken over with a notice. A lock from another host
cannot be checked from here: the message says how to remove it once that process is known to be gone.
Only global rank 0 takes the lock (the other ranks of a distributed run are its own children).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from ..config import ConfigError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """`with RunLock(path):` holds the lock file at `path` (see the module docstring); re-entrant per process."""

    def __init__(self, path: Path, key: str = "trainer.run_dir_exists"):
        self.path, self.key = Path(path), key
        self._held = False

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):  # a stale lock is removed and the exclusive create tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(self.path)
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    return self  # this process already holds it (train after pretrain-bridge in one process)
                self._refuse_or_take_over(holder, me["host"])
                continue
            except OSError as err:
                raise ConfigError(self.key, f"cannot create the run lock {self.path} ({err.strerror or err})") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self._held = True
            return self
        raise ConfigError(self.key, f"{self.path}: another process keeps taking the run lock")

    def _refuse_or_take_over(self, holder: dict, host: str) -> None:
        pid, where, since = holder.get("pid"), holder.get("host"), holder.get("started", "?")
        if where == host and isinstance(pid, int) and not _alive(pid):
            print(f"nami: note: taking over the run lock {self.path} of process {pid} on {host}, which is gone",
                  file=sys.stderr)  # fmt: skip
            self.path.unlink(missing_ok=True)
            return
        if not holder:  # unreadable: a process is writing it right now, or it was damaged
            raise ConfigError(self.key, f"{self.path.parent} is locked ({self.path} is unreadable); if no process "
                                        f"works there, remove {self.path}")  # fmt: skip
        raise ConfigError(self.key, f"{self.path.parent} is in use by process {pid} on {where} (since {since}); "
                                    f"wait for it, use another name=, or, if that process is gone, remove "
                                    f"{self.path}")  # fmt: skip

    def release(self) -> None:
        if self._held:
            holder = _holder(self.path)
            if holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
