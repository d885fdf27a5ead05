"""Errors the CLI reports as one line: `ConfigError` (bad config or input, exit 2, see config.py) and
`RunStopped` (a run that had to stop, e.g. on a non-finite loss; exit 1)."""

from __future__ import annotations

from .config import ConfigError


class RunStopped(RuntimeError):
    """A run stopped on purpose; the message says why and what to change."""


__all__ = ["ConfigError", "RunStopped"]
