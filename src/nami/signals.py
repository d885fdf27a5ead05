"""Stop signals: a scheduler's request to stop (SIGTERM; SIGUSR1, SLURM's `--signal` warning before the time
limit), honoured where nothing is half done, with an exit status that says the work did not finish.

`handling_stop_signals()` is active around the commands that work for long (`nami train`, `nami sample`,
`nami eval`). Outside a `deferring_stop()` section the first stop signal raises `Interrupted` at once, as Ctrl-C
raises KeyboardInterrupt: the kit writes every file through a partial file renamed into place, so an interrupted
write leaves nothing that passes for a result, and its cleanup runs. Inside such a section (the training loop, a
sampling loop) the signal is only recorded, with a note on stderr; the work asks `stop_signal()` where it can stop
cleanly (the end of an optimizer step, once its checkpoint is written; the end of a batch of images) and raises
`Interrupted` itself. Only the first signal counts: a second one, while the work saves or cleans up, is noted and
changes nothing.

The handler acts only in the process that installed it. A DataLoader worker forked from that process inherits the
handler and so ignores the signal: the main process decides, and ends its workers when it exits. (A worker killed
by a group-wide SIGTERM would make torch raise "worker exited unexpectedly" in the main process, from its SIGCHLD
handler, in the middle of the checkpoint being saved.)
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # SIGTERM first: when ranks got different ones, it decides
AFTER_BATCH = "stopping after the current batch of images"  # the note of the sampling loops' deferring_stop


class _State:
    """What this process's handler knows (one per process: signal handlers are process-wide)."""

    def __init__(self):
        self.owner: int | None = None  # pid of the process that installed the handler
        self.depth = 0  # nesting of handling_stop_signals()
        self.previous: dict[int, object] = {}
        self.received: int | None = None  # the first stop signal received
        self.deferring: list[str] = []  # what each open deferring_stop() section will do (innermost last)


_state = _State()


def _note(text: str) -> None:
    """A line on stderr from inside a handler: os.write, since the interrupted code may be inside sys.stderr's own
    write (a buffered stream raises "reentrant call" when its handler writes to it)."""
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def _handle(signum: int, frame) -> None:
    if os.getpid() != _state.owner:  # a forked DataLoader worker (module docstring)
        return
    name = signal.Signals(signum).name
    if _state.received is not None:
        _note(f"nami: {name} received again; already stopping")
        return
    _state.received = signum
    if _state.deferring:
        _note(f"nami: {name} received: {_state.deferring[-1]}")
        return
    raise Interrupted(signum)


@contextmanager
def handling_stop_signals() -> Iterator[None]:
    """Stop signals handled as the module docstring says while the block runs; the previous handlers after it.
    Nested uses share the outer one. Outside the main thread (where no handler can be set) nothing changes."""
    if _state.depth:
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.owner, _state.received, _state.deferring = os.getpid(), None, []
    _state.previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    claim_handlers()
    _state.depth = 1
    try:
        yield
    finally:
        _state.depth = 0
        for signum, handler in _state.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _state.owner, _state.deferring = None, []


def claim_handlers() -> None:
    """Install the handler again over whatever another library put there since (Lightning's, at the start of
    `Trainer.fit`: nami.lit.stopping says why it is replaced during training)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handle)


def active() -> bool:
    """Whether this process handles stop signals (inside `handling_stop_signals()`, in the main thread)."""
    return _state.owner == os.getpid() and _state.depth > 0


@contextmanager
def deferring_stop(note: str) -> Iterator[None]:
    """While the block runs a stop signal is only recorded (`note`: what will happen, printed when one comes); the
    block asks `stop_signal()` where it can stop."""
    _state.deferring.append(note)
    try:
        yield
    finally:
        _state.deferring.pop()


def stop_signal() -> int | None:
    """The stop signal this process received while handling them (None: none)."""
    return _state.received if active() else None


def stop_requested() -> bool:
    """Whether a stop signal came (the `stop` a sampling loop asks between batches)."""
    return stop_signal() is not None
