"""`nami data synth|check|encode`."""

from __future__ import annotations

import argparse
import json
import os

from ..config import ConfigError, load
from .common import add_config_args, positive_int, print_report


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Write GenEval-Shapes shards (img2dataset layout) for the tiny demo and the evaluator."""
    from data_modules.synth import parse_aspect_ratios, write_shapes

    ratios = parse_aspect_ratios(args.aspect_ratios) if args.aspect_ratios else None
    report = write_shapes(args.out, args.num, args.shards, args.resolution, args.seed, args.image_format, ratios)
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


STORAGE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def cmd_data_encode(args: argparse.Namespace) -> int:
    """Precomputed VAE latents + text embeddings: stream the shards once, write shards data.precomputed=true reads."""
    import torch

    from data_modules.encode import encode_shards, format_encode

    from ..sampling.precision import autocast_dtype, uses_cuda
    from ..parts import build_encoders

    cfg = load(args.config, args.overrides)
    world = args.world_size or int(os.environ.get("WORLD_SIZE", 1))  # torchrun / SLURM-style launches
    rank = args.rank if args.rank is not None else int(os.environ.get("RANK", 0))
    device, autocast = torch.device("cpu"), None  # fp32 on CPUs
    if uses_cuda(cfg.trainer.accelerator):  # bf16 / fp16 autocast as trainer.precision resolves on a GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        torch.cuda.set_device(device)
        autocast = autocast_dtype(cfg.trainer.precision, cfg.trainer.accelerator)
    storage = (autocast or torch.float32) if args.dtype == "auto" else getattr(torch, args.dtype)

    def encoders():
        text_encoder, autoencoder = build_encoders(cfg)
        return text_encoder.to(device).eval(), autoencoder.to(device).eval()

    report = encode_shards(cfg, args.out, encoders, rank, world, device, autocast, storage, args.shard_size)
    return print_report(args, report, format_encode)


def add_commands(sub):
    data = sub.add_parser("data", help="synthesise, check and encode data shards")
    group = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    synth = group.add_parser("synth", help=cmd_data_synth.__doc__.splitlines()[0])
    synth.add_argument("--out", required=True, help="output directory for the .tar shards")
    synth.add_argument("--num", type=positive_int, default=10_000, help="samples (default 10000)")
    synth.add_argument("--shards", type=positive_int, default=10, help="shards (default 10)")
    synth.add_argument("--resolution", type=positive_int, default=32, help="image side (default 32)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-format", choices=("png", "jpg"), default="png")
    synth.add_argument("--aspect-ratios", metavar="W:H,...",
                       help="render at these aspect ratios, width:height, cycled over the samples (e.g. "
                            "1:2,1:1,2:1; each image about resolution^2 pixels; default square)")  # fmt: skip
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
    encode = group.add_parser("encode", help=cmd_data_encode.__doc__.splitlines()[0])
    add_config_args(encode)
    encode.add_argument("--out", required=True, help="output directory (resumes what a killed run left there)")
    encode.add_argument("--world-size", type=positive_int, default=None, metavar="N",
                        help="ranks sharing the shards (default: $WORLD_SIZE or 1); run once per rank")
    encode.add_argument("--rank", type=int, default=None, metavar="R", help="this rank (default: $RANK or 0)")
    encode.add_argument("--shard-size", type=positive_int, default=1000, help="samples per output shard")
    encode.add_argument("--dtype", choices=STORAGE_DTYPES, default="auto",
                        help="stored tensors (auto: the autocast dtype on GPUs, float32 on CPUs)")
    encode.set_defaults(func=cmd_data_encode)
    return group
