"""Shared pieces of the safety tests: a tiny trained run, hostile files, and the CLI run in-process."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from .helpers import EXPERIMENTS, LEARNED_TEXT

TINY = EXPERIMENTS / "tiny.yaml"


def run_args(root: Path, shapes: Path, *extra: str) -> list[str]:
    """Overrides for a 2-step tiny run on the learned text encoder under `root`."""
    return [*LEARNED_TEXT, f"data.shards={shapes}/*.tar", "data.batch_size=6", "data.num_workers=0",
            f"trainer.default_root_dir={root}", "trainer.accelerator=cpu", "trainer.max_steps=2",
            "trainer.checkpoint_every=2", "log.sample_prompts=[a red circle]", "sampler.steps=[1,1,1]",
            "bridge.kind=identity", *extra]  # fmt: skip


class RunsCode:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_evil_metadata(directory: Path, marker: Path) -> Path:
    """A directory that looks like an FSDP checkpoint whose `.metadata` runs code when unpickled."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    return directory


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`nami ARGV` in this process: (exit code, stdout, stderr)."""
    from nami.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The single `nami: error:` line a bad input must produce (warnings from libraries aside)."""
    lines = [line for line in err.strip().splitlines() if line.startswith("nami: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]
