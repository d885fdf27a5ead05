"""The `nami` command: parse, load the config, call library code. Errors in config or input are one line
on stderr and exit code 2, before any compute."""

from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, load


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nami", description="NAMI kit: multi-stage rectified flow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help=cmd_info.__doc__.splitlines()[0])
    _add_config_args(info)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"nami: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
