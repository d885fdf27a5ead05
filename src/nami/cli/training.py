"""`nami config`, `nami info`, `nami pretrain-bridge`, `nami train`."""

from __future__ import annotations

import argparse
import json

from ..config import load
from .common import add_config_args, print_report


def cmd_info(args: argparse.Namespace) -> int:
    """Parameters, tokens and FLOPs per stage, schedule, predicted progressive/uniform time ratio."""
    from ..perf import format_report, info_report

    report = info_report(load(args.config, args.overrides))
    return print_report(args, report, format_report)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config (defaults, base chain, file, overrides) as YAML: every key there is to set."""
    import yaml

    from ..config import to_dict

    data = to_dict(load(args.config, args.overrides))
    print(json.dumps(data) if args.json else yaml.safe_dump(data, sort_keys=False), end="" if not args.json else "\n")
    return 0


def cmd_pretrain_bridge(args: argparse.Namespace) -> int:
    """Fit BridgeFlow (closed form or SGD); write runs/<name>/bridges.safetensors and bridge_report.json."""
    from ..lit.runner import pretrain_bridges

    fit = pretrain_bridges(load(args.config, args.overrides))
    if fit.report:  # rank 0 of a multi-process run, or the only process
        for name, per_transition in fit.report["heldout_mse"].items():
            values = ", ".join(f"{t}={v:.5f}" for t, v in per_transition.items())
            print(f"held-out MSE {name:>12}: {values}")
        print(f"wrote {fit.run.bridges} and {fit.run.bridge_report.name}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Joint multi-resolution flow training (resumable with trainer.resume=last)."""
    from ..artifacts.export import newest_export
    from ..lit.runner import train

    run = train(load(args.config, args.overrides))
    print(f"run directory: {run}")
    export = newest_export(run)
    if export is not None:  # written at the end of training (rank 0)
        print(f"model directory: {export}")
    return 0


def add_commands(sub) -> None:
    config = sub.add_parser("config", help=cmd_config.__doc__.splitlines()[0])
    add_config_args(config)
    config.set_defaults(func=cmd_config)
    info = sub.add_parser("info", help=cmd_info.__doc__.splitlines()[0])
    add_config_args(info)
    info.set_defaults(func=cmd_info)
    for name, func in (("pretrain-bridge", cmd_pretrain_bridge), ("train", cmd_train)):
        parser = sub.add_parser(name, help=func.__doc__.splitlines()[0])
        add_config_args(parser, json_flag=False)
        parser.set_defaults(func=func)
