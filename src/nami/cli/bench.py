"""`nami bench sampling|training|data`: measured throughput and speed ratios."""

from __future__ import annotations

import argparse

from ..config import load
from ..config.buckets import check_image_size, grid_step
from ..config.validation import MAX_SIDE
from .common import add_config_args, positive_int, print_report


def cmd_bench_data(args: argparse.Namespace) -> int:
    """Data pipeline samples/s next to a bare decode+resize loop over the same files."""
    from data_modules.bench import bench_data, format_bench

    from ..parts import build_parts

    cfg = load(args.config, args.overrides)
    flow = build_parts(cfg, fitted=False, networks=False, encoders=False).flow  # its stage mix splits the batches
    report = bench_data(cfg, flow.mix, samples=args.samples)
    return print_report(args, report, format_bench)


def cmd_bench_sampling(args: argparse.Namespace) -> int:
    """Uniform vs progressive vs no-nesting sampling time, bridge vs renoise transitions, vs the FLOP model."""
    from ..perf.bench import bench_sampling, format_sampling
    from ..sampling import Pipeline

    cfg = load(args.config, args.overrides)
    check_image_size(args.height or cfg.resolution, args.width or cfg.resolution, grid_step(cfg), MAX_SIDE,
                     ("--height", "--width"))  # fmt: skip
    pipeline = Pipeline.from_weights(cfg, args.ckpt) if args.ckpt else None
    report = bench_sampling(cfg, pipeline, batch=args.batch or cfg.eval.batch_size, repeats=args.repeats,
                            height=args.height, width=args.width)  # fmt: skip
    return print_report(args, report, format_sampling)


def cmd_bench_training(args: argparse.Namespace) -> int:
    """Joint vs full-resolution-only training step (vs the FLOP model); online encoding vs precomputed inputs.

    data.precomputed picks the data path of the first figures; the other path is timed in the same run."""
    from ..perf.bench import bench_training, format_training

    report = bench_training(load(args.config, args.overrides), repeats=args.repeats, compare_data=True)
    return print_report(args, report, format_training)


def add_commands(sub):
    """The `bench` group; returns its subparsers so other benchmarks (sampling, training) join it."""
    bench = sub.add_parser("bench", help="measured throughput and speed ratios")
    group = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    data = group.add_parser("data", help=cmd_bench_data.__doc__.splitlines()[0])
    add_config_args(data)
    data.add_argument("--samples", type=positive_int, default=2000, help="samples timed per loop")
    data.set_defaults(func=cmd_bench_data)
    sampling = group.add_parser("sampling", help=cmd_bench_sampling.__doc__.splitlines()[0])
    add_config_args(sampling)
    sampling.add_argument("--ckpt", help="trained weights (timing does not depend on them; default: random init)")
    sampling.add_argument("--batch", type=positive_int, default=None,
                          help="images per sampling call (default: eval.batch_size, the batch `nami eval` samples with)")
    sampling.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (median)")
    sampling.add_argument("--height", type=positive_int, help="image height in pixels (default: resolution), e.g. "
                                                              "a non-square data.buckets size")  # fmt: skip
    sampling.add_argument("--width", type=positive_int, help="image width in pixels (default: resolution)")
    sampling.set_defaults(func=cmd_bench_sampling)
    training = group.add_parser("training", help=cmd_bench_training.__doc__.splitlines()[0])
    add_config_args(training)
    training.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (median)")
    training.set_defaults(func=cmd_bench_training)
    return group
