"""`nami data synth|check`."""

from __future__ import annotations

import argparse
import json

from ..config import ConfigError, load
from .common import add_config_args, positive_int, print_report


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
    print_report(args, report, format_check)
    if report["samples"] == 0:  # a pass that found nothing to train on is a failure, whatever the format
        raise ConfigError("data.shards", f"no usable sample in {report['shards']} shard(s); skipped: {report['skipped']}")
    return 0


def add_commands(sub):
    data = sub.add_parser("data", help="synthesise and check data shards")
    group = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    synth = group.add_parser("synth", help=cmd_data_synth.__doc__.splitlines()[0])
    synth.add_argument("--out", required=True, help="output directory for the .tar shards")
    synth.add_argument("--num", type=positive_int, default=10_000, help="samples (default 10000)")
    synth.add_argument("--shards", type=positive_int, default=10, help="shards (default 10)")
    synth.add_argument("--resolution", type=positive_int, default=32, help="image side (default 32)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-format", choices=("png", "jpg"), default="png")
    synth.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    synth.set_defaults(func=cmd_data_synth)
    check = group.add_parser("check", help=cmd_data_check.__doc__.splitlines()[0])
    add_config_args(check)
    check.add_argument("--keys-out", metavar="FILE", help="write every key seen, one a line")
    check.add_argument(
        "--world-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="read as each of N ranks in turn (same split as training): per-rank counts, duplicates",
    )
    check.set_defaults(func=cmd_data_check)
    return group
