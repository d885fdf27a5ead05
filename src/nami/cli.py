"""The `nami` command: parse, load the config, call library code. Errors in config or input are one line
on stderr and exit code 2, before any compute."""

from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, load
from .errors import RunStopped


def _add_config_args(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    parser.add_argument("config", help="experiment YAML (e.g. experiments/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="omegaconf dotlist overrides")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def cmd_info(args: argparse.Namespace) -> int:
    """Parameters, tokens and FLOPs per stage, schedule, predicted progressive/uniform time ratio."""
    from .perf import format_report, info_report

    report = info_report(load(args.config, args.overrides))
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Write GenEval-Shapes shards (img2dataset layout) for the tiny demo and the evaluator."""
    from data_modules.synth import write_shapes

    report = write_shapes(args.out, args.num, args.shards, args.resolution, args.seed, args.image_format)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"wrote {report['samples']} samples in {report['shards']} shards to {report['out']}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Stream every shard once through the training split: samples, skipped by reason, samples/s."""
    from data_modules.check import check_data, format_check

    report = check_data(load(args.config, args.overrides), args.world_size, args.keys_out)
    print(json.dumps(report) if args.json else format_check(report))
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    """Data pipeline samples/s next to a bare decode+resize loop over the same files."""
    from data_modules.bench import bench_data, format_bench

    report = bench_data(load(args.config, args.overrides), samples=args.samples)
    print(json.dumps(report) if args.json else format_bench(report))
    return 0


def cmd_pretrain_bridge(args: argparse.Namespace) -> int:
    """Fit BridgeFlow (closed form or SGD); write runs/<name>/bridges.safetensors and bridge_report.json."""
    from .lit.runner import pretrain_bridges, run_dir

    cfg = load(args.config, args.overrides)
    report = pretrain_bridges(cfg)
    if report:  # rank 0 of a multi-process run, or the only process
        for name, per_transition in report["heldout_mse"].items():
            values = ", ".join(f"{t}={v:.5f}" for t, v in per_transition.items())
            print(f"held-out MSE {name:>12}: {values}")
        print(f"wrote {run_dir(cfg) / 'bridges.safetensors'} and bridge_report.json")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Joint multi-resolution flow training (resumable with trainer.resume=last)."""
    from .lit.runner import train

    out = train(load(args.config, args.overrides))
    print(f"run directory: {out}")
    return 0


def _add_training_commands(sub) -> None:
    for name, func in (("pretrain-bridge", cmd_pretrain_bridge), ("train", cmd_train)):
        parser = sub.add_parser(name, help=func.__doc__.splitlines()[0])
        _add_config_args(parser, json_flag=False)
        parser.set_defaults(func=func)


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="synthesise and check data shards")
    group = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    synth = group.add_parser("synth", help=cmd_data_synth.__doc__.splitlines()[0])
    synth.add_argument("--out", required=True, help="output directory for the .tar shards")
    synth.add_argument("--num", type=_positive_int, default=10_000, help="samples (default 10000)")
    synth.add_argument("--shards", type=_positive_int, default=10, help="shards (default 10)")
    synth.add_argument("--resolution", type=_positive_int, default=32, help="image side (default 32)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-format", choices=("png", "jpg"), default="png")
    synth.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    synth.set_defaults(func=cmd_data_synth)
    check = group.add_parser("check", help=cmd_data_check.__doc__.splitlines()[0])
    _add_config_args(check)
    check.add_argument("--keys-out", metavar="FILE", help="write every key seen, one a line")
    check.add_argument(
        "--world-size",
        type=_positive_int,
        default=1,
        metavar="N",
        help="read as each of N ranks in turn (same split as training): per-rank counts, duplicates",
    )
    check.set_defaults(func=cmd_data_check)


def _add_bench_commands(sub):
    """The `bench` group; returns its subparsers so other benchmarks (sampling, training) join it."""
    bench = sub.add_parser("bench", help="measured throughput and speed ratios")
    group = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    data = group.add_parser("data", help=cmd_bench_data.__doc__.splitlines()[0])
    _add_config_args(data)
    data.add_argument("--samples", type=_positive_int, default=2000, help="samples timed per loop")
    data.set_defaults(func=cmd_bench_data)
    return group


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nami", description="NAMI kit: multi-stage rectified flow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help=cmd_info.__doc__.splitlines()[0])
    _add_config_args(info)
    info.set_defaults(func=cmd_info)
    _add_training_commands(sub)
    _add_data_commands(sub)
    _add_bench_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may also follow options: `nami info CONFIG --json key=value`
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"nami: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:  # e.g. a non-finite loss: one line, exit 1
        print(f"nami: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
