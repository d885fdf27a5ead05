"""`nami sample`, `nami eval`.

CONFIG is optional: --ckpt's model directory (config.json) or run directory (config.yaml) records the config
its weights were trained with. A YAML and overrides given as well are layered over it and may change sampler,
eval and trainer keys only; a different value for a model key is refused, naming it (nami.artifacts.model_dir).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..artifacts.layout import EVALS, SAMPLES
from ..config import ConfigError, NamiConfig
from ..config.buckets import check_image_size, eval_size, grid_step
from ..config.validation import MAX_PROMPTS_PER_CATEGORY, MAX_SEED, MAX_SIDE
from ..errors import Interrupted
from ..signals import AFTER_BATCH, deferring_stop, stop_requested, stop_signal
from .common import positive_int
from .prompt_files import add_prompt_file_args, cmd_sample_prompts


def config_for_checkpoint(args: argparse.Namespace, overrides: list[str]) -> NamiConfig:
    """The config to sample --ckpt with: the recorded config of the model or run directory the weights belong
    to (CONFIG optional), with CONFIG and overrides layered on top (`nami.artifacts.model_dir`)."""
    from ..artifacts.model_dir import config_for_weights

    config = args.config
    if config is not None and "=" in config and not Path(config).is_file():
        overrides, config = [config, *overrides], None  # argparse gave the first override to CONFIG
    return config_for_weights(args.ckpt, config, overrides)


def pipeline_with_adapters(cfg: NamiConfig, args: argparse.Namespace):
    """The sampling pipeline over --ckpt's weights, with every --lora DIR[:SCALE] added (checked before any
    sampling)."""
    from ..artifacts.lora import parse_lora_argument
    from ..sampling import Pipeline

    pipeline = Pipeline.from_weights(cfg, args.ckpt)
    for text in args.lora or ():
        directory, scale = parse_lora_argument(text)
        pipeline.load_lora(directory, scale)
    return pipeline


def cmd_sample(args: argparse.Namespace) -> int:
    """Progressive sampling from trained weights; --stages also writes every stage side by side."""
    from ..artifacts.files import numbered_directory
    from ..artifacts.weights import weights_home
    from ..sampling.images import write_samples

    if args.prompts is not None or not args.prompt:
        return cmd_sample_prompts(args, config_for_checkpoint, pipeline_with_adapters)
    for prompt in args.prompt:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # the shell handed bytes that are not UTF-8 (kept as surrogates by Python)
            raise ConfigError("--prompt", f"{prompt.encode('utf-8', 'replace').decode()!r} is not UTF-8 text") from None
    if not 0 <= args.seed <= MAX_SEED - (len(args.prompt) - 1):
        raise ConfigError("--seed", f"must lie in [0, 2**63 - 1 - (prompts - 1)] (prompt i uses seed + i), got {args.seed}")
    overrides = list(args.overrides)
    if args.steps:
        overrides.append(f"sampler.steps=[{args.steps}]")
    if args.guidance is not None:
        overrides.append(f"sampler.guidance={args.guidance}")
    cfg = config_for_checkpoint(args, overrides)
    height, width = args.height or cfg.resolution, args.width or cfg.resolution
    check_image_size(height, width, grid_step(cfg), MAX_SIDE, ("--height", "--width"))  # before anything is written
    # the output directory first: a bad --out costs nothing
    out = numbered_directory(Path(args.out) if args.out else weights_home(args.ckpt) / SAMPLES)
    pipeline = pipeline_with_adapters(cfg, args)
    with deferring_stop(AFTER_BATCH):  # a stop signal ends the sampling after the current batch
        result = pipeline.sample(args.prompt, seed=args.seed, keep_stages=args.stages, batch_size=args.batch_size,
                                 progress=True, height=height, width=width, stop=stop_requested)  # fmt: skip
    done = len(result.images)
    for path in write_samples(result, args.prompt[:done], out, stages=args.stages):
        print(path)
    if done < len(args.prompt):
        raise Interrupted(stop_signal(), f"{done} of {len(args.prompt)} images written to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """GenEval-Shapes score per category over a fixed seeded prompt set (+ FID / CLIPScore with weights)."""
    from ..artifacts.files import numbered_directory
    from ..artifacts.weights import weights_home
    from ..eval.report import format_eval, sample_and_score

    if args.num is not None and args.num > MAX_PROMPTS_PER_CATEGORY:
        raise ConfigError("--num", f"must be at most {MAX_PROMPTS_PER_CATEGORY:,} prompts per category, got {args.num:,}")
    if args.out and not args.save_images:
        raise ConfigError("--out", "is where --save-images writes; add --save-images")
    cfg = config_for_checkpoint(args, list(args.overrides))
    if args.height or args.width:  # a named bucket (or any size on the grid): sets eval.size
        height, width = args.height or eval_size(cfg)[0], args.width or eval_size(cfg)[1]
        check_image_size(height, width, grid_step(cfg), MAX_SIDE, ("--height", "--width"))  # before anything is written
        cfg.eval.size = [height, width]
    # the output directory first: a bad --out costs nothing
    out = numbered_directory(Path(args.out) if args.out else weights_home(args.ckpt) / EVALS) if args.save_images else None
    with deferring_stop(AFTER_BATCH):  # a stop signal ends the sampling after the current batch, scoring nothing
        report, images = sample_and_score(pipeline_with_adapters(cfg, args), cfg, args.num, progress=not args.json,
                                          stop=stop_requested)  # fmt: skip
    if report is None:
        kept = f"; they are in {save_unscored_images(out, images, cfg.eval.seed)}" if out is not None else ""
        raise Interrupted(stop_signal(), f"{len(images)} images sampled, none scored{kept}")
    if out is not None:
        report["saved"] = str(save_scored_images(out, images, report, cfg.eval.seed))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "results" or args.per_image}))
    else:
        print(format_eval(report))
    return 0


def save_unscored_images(out: Path, images, seed: int) -> Path:
    """The images of an evaluation that a stop signal ended before scoring: <i:05d>.png and results.jsonl with
    each file and its seed."""
    from ..artifacts.files import write_atomically
    from ..sampling.images import save_png

    lines = []
    for i, image in enumerate(images):
        write_atomically(out / f"{i:05d}.png", lambda p, image=image: save_png(image, p))
        lines.append(json.dumps({"file": f"{i:05d}.png", "seed": seed + i}))
    write_atomically(out / "results.jsonl", lambda p: p.write_text("\n".join(lines) + "\n"))
    return out


def save_scored_images(out: Path, images, report: dict, seed: int) -> Path:
    """Into `out`: image i as <i:05d>.png, results.jsonl (one line per image: file, seed and its scores: category,
    prompt, correct, reason, detections) and report.json (the summary). Returns `out`."""
    from ..artifacts.files import write_atomically
    from ..sampling.images import save_png

    lines = []
    for i, (image, result) in enumerate(zip(images, report["results"], strict=True)):
        name = f"{i:05d}.png"
        write_atomically(out / name, lambda p, image=image: save_png(image, p))
        lines.append(json.dumps({"file": name, "seed": seed + i, **result}))
    write_atomically(out / "results.jsonl", lambda p: p.write_text("\n".join(lines) + "\n"))
    summary = {k: v for k, v in report.items() if k != "results"}
    write_atomically(out / "report.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return out


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="experiment YAML; optional when --ckpt is a model or run "
                                                  "directory (then it may change sampler / eval / trainer "
                                                  "keys only)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="omegaconf dotlist overrides")
    parser.add_argument("--ckpt", required=True,
                        help="a model directory (`nami export`, a LoRA run's too), a run directory, "
                             "weights.safetensors or a .ckpt")  # fmt: skip
    parser.add_argument("--lora", action="append", metavar="DIR[:SCALE]",
                        help="add a LoRA adapter (adapter_model.safetensors + adapter_config.json) at SCALE "
                             "(default 1); repeatable")  # fmt: skip


def add_commands(sub) -> None:
    sample = sub.add_parser("sample", help=cmd_sample.__doc__.splitlines()[0])
    _config_args(sample)
    sample.add_argument("--prompt", action="append", help="repeat for several prompts")
    sample.add_argument("--out", help="where the numbered directory of this call goes (default: the weights' "
                                      "directory/samples); earlier samples are never replaced. With --prompts: "
                                      "the directory the layout is written to (run again to continue it)")
    add_prompt_file_args(sample)
    sample.add_argument("--steps", help="per-stage Euler steps, e.g. 10,10,10 (sets sampler.steps)")
    sample.add_argument("--guidance", "--cfg", type=float, dest="guidance",
                        help="classifier-free guidance scale (sets sampler.guidance)")
    sample.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i (with --prompts: every image's "
                                                            "seed derives from it, see nami.sampling.prompts)")
    sample.add_argument("--stages", action="store_true",
                        help="also write each stage's start, end and predicted clean image")
    sample.add_argument("--batch-size", type=positive_int, default=16)
    sample.add_argument("--height", type=positive_int, help="image height in pixels (default: resolution); a "
                                                            "multiple of the stage grid, e.g. a data.buckets size")
    sample.add_argument("--width", type=positive_int, help="image width in pixels (default: resolution)")
    sample.set_defaults(func=cmd_sample)
    evaluate = sub.add_parser("eval", help=cmd_eval.__doc__.splitlines()[0],
                              epilog="nami eval fid DIR REFERENCE --weights W and nami eval clip DIR --clip C score "
                                     "image folders instead (nami eval fid --help)")  # fmt: skip
    _config_args(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.add_argument("--num", type=positive_int, help="prompts per category (default eval.per_category)")
    evaluate.add_argument("--per-image", action="store_true", help="with --json: include every image's result")
    evaluate.add_argument("--save-images", action="store_true",
                          help="keep every scored image, with results.jsonl (per-image scores) and report.json, "
                               "in a new numbered directory under --out (default: the weights' directory/eval)")
    evaluate.add_argument("--out", help="with --save-images: where its numbered directory goes")
    evaluate.add_argument("--height", type=positive_int, help="image height in pixels to sample and score at (sets "
                                                              "eval.size; default: eval.size, else resolution), "
                                                              "e.g. a data.buckets size")  # fmt: skip
    evaluate.add_argument("--width", type=positive_int, help="image width in pixels (default: eval.size, else "
                                                             "resolution)")  # fmt: skip
    evaluate.set_defaults(func=cmd_eval)
