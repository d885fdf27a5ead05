"""The `nami` command: parse, load the config, call library code. Errors in config or input are one line
on stderr and exit code 2, before any compute."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, load
from .errors import RunStopped


def _add_config_args(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    parser.add_argument("config", help="experiment YAML (e.g. experiments/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="omegaconf dotlist overrides")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _print(args: argparse.Namespace, report: dict, formatter) -> int:
    """One JSON object with --json, else the human-readable form; exit code 0."""
    print(json.dumps(report) if args.json else formatter(report))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Parameters, tokens and FLOPs per stage, schedule, predicted progressive/uniform time ratio."""
    from .perf import format_report, info_report

    report = info_report(load(args.config, args.overrides))
    return _print(args, report, format_report)


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
    return _print(args, report, format_check)


def cmd_bench_data(args: argparse.Namespace) -> int:
    """Data pipeline samples/s next to a bare decode+resize loop over the same files."""
    from data_modules.bench import bench_data, format_bench

    report = bench_data(load(args.config, args.overrides), samples=args.samples)
    return _print(args, report, format_bench)


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


def cmd_sample(args: argparse.Namespace) -> int:
    """Progressive sampling from trained weights; --stages also writes every stage side by side."""
    from .lit.images import write_samples
    from .lit.inference import ProgressiveInferenceModule, predict
    from .lit.runner import run_dir

    overrides = list(args.overrides)
    if args.steps:
        overrides.append(f"sampler.steps=[{args.steps}]")
    if args.guidance is not None:
        overrides.append(f"sampler.guidance={args.guidance}")
    cfg = load(args.config, overrides)
    module = ProgressiveInferenceModule.from_checkpoint(cfg, args.ckpt, keep_stages=args.stages)
    result = predict(module, args.prompt, seed=args.seed, batch_size=args.batch_size)
    out = Path(args.out) if args.out else run_dir(cfg) / "samples" / "cli"
    for path in write_samples(result, args.prompt, out, stages=args.stages):
        print(path)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """GenEval-Shapes score per category over a fixed seeded prompt set (+ FID / CLIPScore with weights)."""
    from .lit.evaluation import evaluate_module, format_eval
    from .lit.inference import ProgressiveInferenceModule

    cfg = load(args.config, args.overrides)
    module = ProgressiveInferenceModule.from_checkpoint(cfg, args.ckpt)
    report = evaluate_module(module, args.num, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "results" or args.per_image}))
    else:
        print(format_eval(report))
    return 0


def _add_training_commands(sub) -> None:
    for name, func in (("pretrain-bridge", cmd_pretrain_bridge), ("train", cmd_train)):
        parser = sub.add_parser(name, help=func.__doc__.splitlines()[0])
        _add_config_args(parser, json_flag=False)
        parser.set_defaults(func=func)
    sample = sub.add_parser("sample", help=cmd_sample.__doc__.splitlines()[0])
    _add_config_args(sample, json_flag=False)
    sample.add_argument("--ckpt", required=True, help="weights.safetensors, a .ckpt, or a run directory")
    sample.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    sample.add_argument("--out", help="output directory (default runs/<name>/samples/cli)")
    sample.add_argument("--steps", help="per-stage Euler steps, e.g. 10,10,10 (sets sampler.steps)")
    sample.add_argument("--guidance", "--cfg", type=float, dest="guidance",
                        help="classifier-free guidance scale (sets sampler.guidance)")
    sample.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    sample.add_argument("--stages", action="store_true", help="also write each stage's start and end")
    sample.add_argument("--batch-size", type=_positive_int, default=16)
    sample.set_defaults(func=cmd_sample)
    evaluate = sub.add_parser("eval", help=cmd_eval.__doc__.splitlines()[0])
    _add_config_args(evaluate)
    evaluate.add_argument("--ckpt", required=True, help="weights.safetensors, a .ckpt, or a run directory")
    evaluate.add_argument("--num", type=_positive_int, help="prompts per category (default eval.per_category)")
    evaluate.add_argument("--per-image", action="store_true", help="with --json: include every image's result")
    evaluate.set_defaults(func=cmd_eval)


def cmd_bench_sampling(args: argparse.Namespace) -> int:
    """Uniform vs progressive vs no-nesting sampling time, bridge vs renoise transitions, vs the FLOP model."""
    from .lit.inference import ProgressiveInferenceModule
    from .perf.bench import bench_sampling, format_sampling

    cfg = load(args.config, args.overrides)
    module = ProgressiveInferenceModule.from_checkpoint(cfg, args.ckpt) if args.ckpt else None
    report = bench_sampling(cfg, module, batch=args.batch or cfg.eval.batch_size, repeats=args.repeats)
    return _print(args, report, format_sampling)


def cmd_bench_training(args: argparse.Namespace) -> int:
    """Joint multi-resolution training step vs full-resolution-only step, vs the FLOP model."""
    from .perf.bench import bench_training, format_training

    report = bench_training(load(args.config, args.overrides), repeats=args.repeats)
    return _print(args, report, format_training)


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
    sampling = group.add_parser("sampling", help=cmd_bench_sampling.__doc__.splitlines()[0])
    _add_config_args(sampling)
    sampling.add_argument("--ckpt", help="trained weights (timing does not depend on them; default: random init)")
    sampling.add_argument("--batch", type=_positive_int, default=None,
                          help="images per sampling call (default: eval.batch_size, the batch `nami eval` samples with)")
    sampling.add_argument("--repeats", type=_positive_int, default=3, help="timed rounds (median)")
    sampling.set_defaults(func=cmd_bench_sampling)
    training = group.add_parser("training", help=cmd_bench_training.__doc__.splitlines()[0])
    _add_config_args(training)
    training.add_argument("--repeats", type=_positive_int, default=3, help="timed rounds (median)")
    training.set_defaults(func=cmd_bench_training)
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
