"""Helpers every subcommand uses: the CONFIG + overrides arguments, --json output, argument types."""

from __future__ import annotations

import argparse
import json


def add_config_args(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    parser.add_argument("config", help="experiment YAML (e.g. experiments/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="omegaconf dotlist overrides (`nami config CONFIG` lists every key)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def print_report(args: argparse.Namespace, report: dict, formatter) -> int:
    """One JSON object with --json, else the human-readable form; exit code 0."""
    print(json.dumps(report) if args.json else formatter(report))
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
