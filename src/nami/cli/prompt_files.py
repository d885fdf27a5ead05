"""`nami sample --prompts FILE --out DIR [--images-per-prompt N] [--layout geneval|dpg|flat]`: a prompt file
sampled into a benchmark's layout, resumable (nami.sampling.layouts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ConfigError
from ..config.buckets import check_image_size, grid_step
from ..config.validation import MAX_SEED, MAX_SIDE
from .common import positive_int


def add_prompt_file_args(parser: argparse.ArgumentParser) -> None:
    from ..sampling.layouts import LAYOUTS

    parser.add_argument("--prompts", metavar="FILE",
                        help="a prompt file (one prompt a line; JSONL with a \"prompt\" field; a directory of "
                             "one-prompt .txt files) or a shipped set (geneval); needs --out")  # fmt: skip
    parser.add_argument("--images-per-prompt", type=positive_int, default=1, metavar="N",
                        help="with --prompts: images per prompt (GenEval: 4; DPG-Bench: 4 at most)")  # fmt: skip
    parser.add_argument("--layout", choices=LAYOUTS, default="flat",
                        help="with --prompts: geneval (what GenEval's evaluate_images.py reads), dpg (DPG-Bench: "
                             "one grid image per prompt id) or flat (numbered files + index.jsonl)")  # fmt: skip


def cmd_sample_prompts(args: argparse.Namespace, config_for_checkpoint, pipeline_with_adapters) -> int:
    """`nami sample --prompts`; the two functions are cli.inference's (the config and pipeline of --ckpt)."""
    from ..sampling.layouts import PromptRun, run_prompt_file, sampling_record
    from ..sampling.prompts import read_prompts

    if args.prompts is None:
        raise ConfigError("--prompt", "give --prompt TEXT (repeatable) or --prompts FILE")
    if args.prompt:
        raise ConfigError("--prompts", "give either --prompt or --prompts, not both")
    if args.stages:
        raise ConfigError("--stages", "writes stage strips for --prompt only, not into a --prompts layout")
    if not args.out:
        raise ConfigError("--out", "--prompts needs --out DIR: the layout is written there, and the same command "
                                   "continues it after an interruption")  # fmt: skip
    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError("--seed", f"must lie in [0, 2**63 - 1], got {args.seed}")
    entries = read_prompts(args.prompts)  # every error in the file before anything else
    overrides = list(args.overrides)
    if args.steps:
        overrides.append(f"sampler.steps=[{args.steps}]")
    if args.guidance is not None:
        overrides.append(f"sampler.guidance={args.guidance}")
    cfg = config_for_checkpoint(args, overrides)
    size = (args.height or cfg.resolution, args.width or cfg.resolution)
    check_image_size(*size, grid_step(cfg), MAX_SIDE, ("--height", "--width"))  # before anything is written
    run = PromptRun(Path(args.out), entries, args.layout, args.images_per_prompt, args.seed, size=size)
    counts = run_prompt_file(lambda: pipeline_with_adapters(cfg, args), run,
                             lambda p: sampling_record(p, cfg, {"size": list(size)}), args.batch_size)  # fmt: skip
    print(f"{run.out}: {counts['written']} images written, {counts['kept']} were there, {counts['images']} in all "
          f"({len(entries)} prompts x {args.images_per_prompt}, {args.layout} layout)")  # fmt: skip
    return 0
