"""The `nami` command: parse, load the config, call library code. Errors in config or input are one line
on stderr and exit code 2, before any compute. `nami train`, `sample` and `eval` honour a stop signal (SIGTERM,
SIGUSR1) where nothing is half done and exit with 128 + its number in one line (nami.signals).

One module per command group (training.py, inference.py, export.py, data.py, bench.py, plan.py, convert.py,
release.py); each offers `add_commands(sub)`.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

from ..errors import ConfigError, Interrupted, RunStopped
from ..signals import handling_stop_signals
from . import ablate, bench, convert, data, export, inference, metrics, plan, release, training

COMMAND_GROUPS = (training, inference, export, data, bench, plan, convert, release, ablate)
# commands that run the networks: they flush denormal floats on the CPU (lit/precision.py says why)
COMPUTE_COMMANDS = {"train", "pretrain-bridge", "sample", "eval", "bench", "ablate"}
# commands that stop cleanly on SIGTERM / SIGUSR1 (at an optimizer step, a batch of images), keeping their work
STOPPABLE_COMMANDS = {"train", "sample", "eval"}


def quiet_warnings() -> None:
    """Warnings about library internals the user cannot act on (Lightning's use of torch's deprecated
    `LeafSpec`, printed at every run)."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=DeprecationWarning)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nami", description="NAMI kit: multi-stage rectified flow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every command that takes CONFIG also takes key=value overrides.\n"
               "`nami config CONFIG [key=value ...]` prints the resolved config: every key there is to set.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if metrics.is_metric_call(argv):  # `nami eval fid|clip ...`: folders, not a model (cli/metrics.py says why)
        parser = metrics.build_parser()
        args, extra = parser.parse_args(argv[1:]), []
        args.command = "eval"
    else:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may also follow options: `nami info CONFIG --json key=value`
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    quiet_warnings()
    if args.command in COMPUTE_COMMANDS:
        from ..sampling.precision import flush_denormals

        flush_denormals()
    try:
        with handling_stop_signals() if args.command in STOPPABLE_COMMANDS else nullcontext():
            return args.func(args)
    except Interrupted as err:  # what was kept is in the line; exit 128 + the signal (143 for SIGTERM)
        if not err.quiet:
            print(f"nami: {err}", file=sys.stderr)
        return err.code
    except ConfigError as err:
        print(f"nami: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:  # e.g. a non-finite loss: one line, exit 1
        print(f"nami: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
