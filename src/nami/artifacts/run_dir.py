"""`RunDir`: the directory a run works in (layout in `layout.py`), claimed from its config.

A run directory records the resolved config it was made with (config.yaml). A later run under the same name:
- with another model (a key of `layout.IDENTITY_SECTIONS` differs) is refused, naming the first differing key;
- with the same model, where training already happened, is refused unless it resumes (`trainer.resume=last` /
  `auto`): starting again from step 0 would replace weights.safetensors, mix two histories in checkpoints/ and
  tb/, and make `resume=last` pick the older run's higher step; bridge fitting there is refused too (it would
  replace the bridge the checkpoints were trained with);
unless `trainer.run_dir_exists` says `new` (the first of name-2, name-3, ... that is free or holds this config
with nothing to restart over) or `overwrite` (the previous run's outputs are removed first).
A process that trains holds the directory's lock (`lock.py`) for the run's life.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ConfigError, NamiConfig, config_from_dict, to_dict
from . import layout
from .weights import step_checkpoints, weights_source


CHOSEN_ENV = "NAMI_RUN_DIR"  # "<pid>:<dir>": the run directory rank 0 claimed, for the processes it launches


def is_first_process() -> bool:
    """Global rank 0 (Lightning re-launches the command on every rank; only one of them writes)."""
    return all(int(os.environ.get(var, "0")) == 0 for var in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def launched_by_rank_zero() -> bool:
    """Whether this process is a rank that Lightning's launcher started from rank 0's process (which recorded the
    run directory it claimed for it in NAMI_RUN_DIR)."""
    parent, _, chosen = os.environ.get(CHOSEN_ENV, "").partition(":")
    return bool(chosen) and parent == str(os.getppid()) and not is_first_process()


def _describe(difference: tuple) -> str:
    key, old, new = difference
    return f"{key}={old!r}, this run has {new!r}"


@dataclass(frozen=True)
class RunDir:
    """A run directory: its path and where each output lives."""

    path: Path

    # ---- where things are ---------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / layout.RUN_CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.path / layout.CHECKPOINTS

    @property
    def weights(self) -> Path:
        """weights.safetensors, the EMA weights written at the end of training."""
        return self.path / layout.RUN_WEIGHTS

    @property
    def bridges(self) -> Path:
        return self.path / layout.BRIDGES

    @property
    def bridge_report(self) -> Path:
        return self.path / layout.BRIDGE_REPORT

    @property
    def samples(self) -> Path:
        return self.path / layout.SAMPLES

    @property
    def exports(self) -> Path:
        return self.path / layout.EXPORTS

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:  # path-like: open(run / "x"), Path(run), os.path functions
        return str(self.path)

    def __truediv__(self, other) -> Path:
        return self.path / other

    @property
    def name(self) -> str:
        return self.path.name

    # ---- what is there ------------------------------------------------------------------------------------
    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of the complete step checkpoints, oldest first."""
        return step_checkpoints(self.checkpoints)

    def weights_file(self, key: str = "--ckpt") -> Path:
        """The weights the run stands for (`weights.weights_source`: the later of weights.safetensors and the
        newest step checkpoint)."""
        return weights_source(self.path, key)

    def resume_checkpoint(self, resume: str | None) -> Path | None:
        """What `trainer.resume` names: None (start fresh), 'last' (the newest step checkpoint; there must be
        one), 'auto' (the newest if there is one, else fresh: one requeueable job script for first launch and
        restarts) or a path. Whatever is chosen is checked to be a checkpoint before Lightning reads it."""
        from .files import check_resumable

        if not resume:
            return None
        if resume in ("last", "auto"):
            steps = self.step_checkpoints()
            if not steps:
                if resume == "auto":
                    return None
                raise ConfigError("trainer.resume", f"no checkpoint to resume under {self.checkpoints}")
            path = steps[-1][1]
        else:
            path = Path(resume)
            if not path.exists():
                raise ConfigError("trainer.resume", f"checkpoint not found: {resume}")
        check_resumable(path)
        return path

    def recorded(self) -> dict | None:
        """The plain-dict config recorded in config.yaml, None when there is none."""
        if not self.config_file.is_file():
            return None
        try:
            data = yaml.safe_load(self.config_file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(str(self.config_file), f"not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(str(self.config_file), "not a recorded config (top level is not a mapping)")
        return data

    def config(self, key: str = "RUN") -> NamiConfig:
        """The config the run was made with."""
        data = self.recorded()
        if data is None:
            raise ConfigError(key, f"{self.path} has no {layout.RUN_CONFIG} (the config a run records)")
        try:
            return config_from_dict(data)
        except ConfigError as err:
            raise ConfigError(str(self.config_file), str(err)) from None

    def has_training(self) -> bool:
        """Whether training (not only bridge fitting) has written here."""
        return any((self.path / name).exists() for name in layout.TRAINING_OUTPUTS)

    def holds_a_run(self) -> bool:
        return self.path.is_dir() and any((self.path / name).exists() for name in layout.RUN_OUTPUTS)

    def lock(self):
        """A context that holds the directory's lock (`lock.py`) on global rank 0; other ranks hold nothing."""
        from contextlib import nullcontext

        from .lock import RunLock

        return RunLock(self.path / layout.LOCK) if is_first_process() else nullcontext()

    # ---- claiming -----------------------------------------------------------------------------------------
    @staticmethod
    def named(cfg: NamiConfig) -> "RunDir":
        """Where a config's run lives by name (before `claim` applies trainer.run_dir_exists=new)."""
        return RunDir(Path(cfg.trainer.default_root_dir) / cfg.name)

    @classmethod
    def claim(cls, cfg: NamiConfig, training: bool = True) -> "RunDir":
        """The run directory for `cfg` (made, and its config recorded, if new), by the rules of the module
        docstring. `training`: the run will train from step 0 unless it resumes (bridge fitting does not)."""
        if launched_by_rank_zero():
            return cls(Path(os.environ[CHOSEN_ENV].partition(":")[2]))  # rank 0 decided before it launched this
        base = cls.named(cfg).path
        current = to_dict(cfg)
        policy = cfg.trainer.run_dir_exists
        # Training from step 0, and bridge fitting (it would replace the bridge the checkpoints were trained with),
        # may not reuse a directory where training happened. Only rank 0 judges: other ranks start after it has
        # begun writing (torchrun ranks that start together follow the same rules on the same directory).
        restarts = (not training or not cfg.trainer.resume) and is_first_process()
        names = [base] + ([base.with_name(f"{base.name}-{i}") for i in range(2, 1000)] if policy == "new" else [])
        for path in names:
            run = cls(path)
            recorded = run.recorded()
            if recorded is None and not run.holds_a_run():
                return run._record(current)
            if recorded is None:  # made by a kit version that did not record its config: adopt it
                print(f"nami: note: {path} has no {layout.RUN_CONFIG}; recording this run's config there",
                      file=sys.stderr)  # fmt: skip
                recorded = current
            difference = layout.first_difference(_normalised(recorded), current)
            if difference is None and not (restarts and run.has_training()):
                return run._record(current, keep_existing=True)
            if policy == "overwrite":
                run._clear()
                reason = _describe(difference) if difference else "same config, training again from step 0"
                print(f"nami: note: removed the previous run in {path} ({reason})", file=sys.stderr)
                return run._record(current)
            if policy == "error":
                raise ConfigError("trainer.run_dir_exists", _refusal(path, difference, training))
        raise ConfigError("trainer.run_dir_exists", f"no free run directory next to {base}")

    def _record(self, config: dict, keep_existing: bool = False) -> "RunDir":
        """Record `config` (unless one is recorded and `keep_existing`), and make this the chosen directory."""
        if is_first_process():
            os.environ[CHOSEN_ENV] = f"{os.getpid()}:{self.path}"  # inherited by the ranks Lightning launches
            if keep_existing and self.config_file.is_file():
                return self
            from .files import write_atomically

            self.path.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(config, sort_keys=False)
            write_atomically(self.config_file, lambda partial: partial.write_text(text))
        return self

    def _clear(self) -> None:
        if not is_first_process():
            return
        for name in layout.RUN_OUTPUTS:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for keys in self.path.glob(layout.KEYS_GLOB):
            keys.unlink()


def _normalised(recorded: dict) -> dict:
    """A recorded config through today's loader (renamed keys mapped), so an older run compares fairly; as it
    was when it no longer loads (the comparison then names what differs)."""
    try:
        return to_dict(config_from_dict(recorded))
    except ConfigError:
        return recorded


def _refusal(path: Path, difference: tuple | None, training: bool) -> str:
    if difference is not None:
        return (f"{path} was made with {_describe(difference)}; use another name=, or "
                "trainer.run_dir_exists=new (or overwrite)")  # fmt: skip
    if not training:
        return (f"{path} already holds a training run, whose checkpoints were trained with its bridge; fit bridges "
                "for another run with trainer.run_dir_exists=new (or overwrite) or another name=")  # fmt: skip
    return (f"{path} already holds a training run of this config; continue it with trainer.resume=last (or auto), "
            "or start another with trainer.run_dir_exists=new (or overwrite), or another name=")  # fmt: skip
