"""`nami plan`: per-GPU memory (parameters, gradients, optimizer state, EMA, activations, frozen encoders) and the
predicted step time of a training config, before launch. Builds nothing but meta tensors: no network runs."""

from __future__ import annotations

import argparse

from ..config import load
from .common import add_config_args, print_report


def cmd_plan(args: argparse.Namespace) -> int:
    """Per-GPU memory and step time of a training run, and which cards it fits."""
    from ..perf.plan import format_plan, plan_report

    options = {"card": args.card} | ({"mfu": args.mfu} if args.mfu is not None else {})
    report = plan_report(load(args.config, args.overrides), **options)
    return print_report(args, report, format_plan)


def add_commands(sub) -> None:
    # the defaults live in nami.perf.plan (imported only when the command runs: it pulls in the models)
    plan = sub.add_parser("plan", help=cmd_plan.__doc__.splitlines()[0])
    add_config_args(plan)
    plan.add_argument("--card", default=None,
                      help="GPU the step time is predicted for, a name from nami.perf.throughput's peak table "
                           "(H100, A100, L40S, ...; default: this machine's GPU, else H100)")  # fmt: skip
    plan.add_argument("--mfu", type=float, default=None,
                      help="fraction of the card's bf16 peak a training step reaches (default 0.4; the plan "
                           "prints the one it used)")  # fmt: skip
    plan.set_defaults(func=cmd_plan)
