"""`nami ablate`: train, score and time several arms over several seeds; write results.csv, summary.md and
summary.png (see nami.ablate)."""

from __future__ import annotations

import argparse

from .common import positive_int


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("needs at least one seed")
    return seeds


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def cmd_ablate(args: argparse.Namespace) -> int:
    """Compare arms (configs plus overrides) over seeds: quality with error bars, a paired test, speed."""
    from ..ablate import Budget, ablate, build_plan, make_arms

    configs = [item for item in args.items if "=" not in item]
    common = [item for item in args.items if "=" in item] + list(args.overrides)
    arms = make_arms(configs, args.arm or [], common)
    plan = build_plan(args.out, arms, args.seeds, Budget(args.steps, args.minutes), common,
                      reference=args.reference, jobs=args.jobs, bench_repeats=args.bench_repeats,
                      eval_num=args.eval_num)  # fmt: skip
    print(f"nami ablate: {len(plan.arms)} arms x {len(plan.seeds)} seeds, {plan.budget.describe()}, "
          f"reference {plan.reference}, output {plan.out}", flush=True)  # fmt: skip
    paths = ablate(plan, say=lambda line: print(line, flush=True))
    print((plan.out / "summary.md").read_text().split("\n\n")[1])  # the table itself
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_commands(sub) -> None:
    about = cmd_ablate.__doc__ + " Timings come from a serial pass after all training: keep the machine idle."
    parser = sub.add_parser("ablate", help=cmd_ablate.__doc__.splitlines()[0], description=about)
    parser.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                        help="arm configs; key=value overrides apply to every arm")
    parser.add_argument("--arm", nargs="+", action="append", metavar="CONFIG key=value",
                        help="one more arm with its own overrides (repeatable), e.g. "
                             "--arm experiments/tiny.yaml sampler.guidance=3 name=tiny_cfg3")  # fmt: skip
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="training seeds (default 0,1,2)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, help="training steps per arm (default: the configs')")
    budget.add_argument("--minutes", type=positive_float, help="or training wall time per arm (--jobs 1)")
    parser.add_argument("--eval-num", type=positive_int,
                        help="GenEval-Shapes prompts per category (default eval.per_category)")
    parser.add_argument("--out", default="runs/ablate", help="output directory (default runs/ablate)")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="arm x seed trainings side by side (timings are still taken one at a time)")
    parser.add_argument("--reference", help="the arm the others are tested against (default: the first)")
    parser.add_argument("--bench-repeats", type=positive_int, default=3, help="timed rounds per benchmark")
    parser.set_defaults(func=cmd_ablate, overrides=[])
