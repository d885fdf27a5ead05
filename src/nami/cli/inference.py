"""`nami sample`, `nami eval`.

CONFIG is optional when --ckpt is a model directory (`nami export`): its config.json describes the model. A
YAML and overrides given as well are layered over it and may change sampler, eval and trainer keys only; a
different value for a model key is refused, naming it (lit/model_dir.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import ConfigError, NamiConfig, load
from .common import positive_int

MAX_SEED = 2**63 - 1  # torch generators take seeds up to this


def config_for_checkpoint(args: argparse.Namespace, overrides: list[str]) -> NamiConfig:
    """The config to sample --ckpt with: a model directory's own (CONFIG optional), else CONFIG's."""
    from ..lit.model_dir import is_model_dir, model_dir_config

    config = args.config
    if config is not None and "=" in config and not Path(config).is_file():
        overrides, config = [config, *overrides], None  # argparse gave the first override to CONFIG
    if is_model_dir(args.ckpt):
        return model_dir_config(args.ckpt, config, overrides)
    if config is None:
        raise ConfigError("config", f"--ckpt {args.ckpt} is not a model directory (config.json + model.safetensors, "
                                    "written by `nami export`): give the experiment YAML")  # fmt: skip
    return load(config, overrides)


def cmd_sample(args: argparse.Namespace) -> int:
    """Progressive sampling from trained weights; --stages also writes every stage side by side."""
    from ..lit.images import fresh_directory, write_samples
    from ..lit.inference import ProgressiveInferenceModule, predict

    if not 0 <= args.seed <= MAX_SEED - (len(args.prompt) - 1):
        raise ConfigError("--seed", f"must lie in [0, 2**63 - 1 - (prompts - 1)] (prompt i uses seed + i), got {args.seed}")
    overrides = list(args.overrides)
    if args.steps:
        overrides.append(f"sampler.steps=[{args.steps}]")
    if args.guidance is not None:
        overrides.append(f"sampler.guidance={args.guidance}")
    cfg = config_for_checkpoint(args, overrides)
    module = ProgressiveInferenceModule.from_checkpoint(cfg, args.ckpt, keep_stages=args.stages)
    result = predict(module, args.prompt, seed=args.seed, batch_size=args.batch_size)
    out = fresh_directory(Path(args.out) if args.out else module.run_dir / "samples")
    for path in write_samples(result, args.prompt, out, stages=args.stages):
        print(path)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """GenEval-Shapes score per category over a fixed seeded prompt set (+ FID / CLIPScore with weights)."""
    from ..lit.evaluation import evaluate_module, format_eval
    from ..lit.inference import ProgressiveInferenceModule

    cfg = config_for_checkpoint(args, list(args.overrides))
    module = ProgressiveInferenceModule.from_checkpoint(cfg, args.ckpt)
    report = evaluate_module(module, args.num, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "results" or args.per_image}))
    else:
        print(format_eval(report))
    return 0


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="experiment YAML; optional when --ckpt is a model "
                                                  "directory (then it may change sampler / eval / trainer "
                                                  "keys only)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="omegaconf dotlist overrides")
    parser.add_argument("--ckpt", required=True,
                        help="a model directory (`nami export`), a run directory, weights.safetensors or "
                             "a .ckpt")  # fmt: skip


def add_commands(sub) -> None:
    sample = sub.add_parser("sample", help=cmd_sample.__doc__.splitlines()[0])
    _config_args(sample)
    sample.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    sample.add_argument("--out", help="where the numbered directory of this call goes (default: the weights' "
                                      "directory/samples); earlier samples are never replaced")
    sample.add_argument("--steps", help="per-stage Euler steps, e.g. 10,10,10 (sets sampler.steps)")
    sample.add_argument("--guidance", "--cfg", type=float, dest="guidance",
                        help="classifier-free guidance scale (sets sampler.guidance)")
    sample.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    sample.add_argument("--stages", action="store_true",
                        help="also write each stage's start, end and predicted clean image")
    sample.add_argument("--batch-size", type=positive_int, default=16)
    sample.set_defaults(func=cmd_sample)
    evaluate = sub.add_parser("eval", help=cmd_eval.__doc__.splitlines()[0])
    _config_args(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.add_argument("--num", type=positive_int, help="prompts per category (default eval.per_category)")
    evaluate.add_argument("--per-image", action="store_true", help="with --json: include every image's result")
    evaluate.set_defaults(func=cmd_eval)
