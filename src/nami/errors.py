"""Errors the CLI reports as one line: `ConfigError` (a bad config value or input file, exit 2),
`RunStopped` (a run that had to stop, e.g. on a non-finite loss; exit 1) and `Interrupted` (a stop signal was
honoured, exit 128 + the signal's number: 143 for SIGTERM, 138 for SIGUSR1; `nami.signals`)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value or input path; `key` names the config key (or file) at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class RunStopped(RuntimeError):
    """A run stopped on purpose; the message says why and what to change."""


class Interrupted(SystemExit):
    """A stop signal (SIGTERM, SIGUSR1) was honoured: the work stopped where nothing is half done (`nami.signals`).

    A SystemExit, as KeyboardInterrupt is a BaseException: raised from a signal handler at any point, no
    `except Exception` on the way (a data decoder's, a scorer's) may take it for an ordinary failure. Its `code` is
    128 + the signal's number, the status a shell reports for a process the signal ended, so a scheduler sees a
    failure; uncaught, the interpreter exits with it. `quiet`: a rank other than 0 of a distributed run, whose
    line rank 0 already prints."""

    def __init__(self, signum: int, detail: str = "", quiet: bool = False):
        import signal

        super().__init__(128 + int(signum))
        self.signum, self.quiet = int(signum), quiet
        name = signal.Signals(signum).name
        self.message = f"stopped by {name}" + (f": {detail}" if detail else "")

    def __str__(self) -> str:
        return self.message


__all__ = ["ConfigError", "Interrupted", "RunStopped"]
