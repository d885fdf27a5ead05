"""Errors the CLI reports as one line: `ConfigError` (a bad config value or input file, exit 2) and
`RunStopped` (a run that had to stop, e.g. on a non-finite loss; exit 1)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value or input path; `key` names the config key (or file) at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class RunStopped(RuntimeError):
    """A run stopped on purpose; the message says why and what to change."""


__all__ = ["ConfigError", "RunStopped"]
