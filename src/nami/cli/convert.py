"""`nami convert official`: the released NAMI-2B checkpoint -> kit weights (and back with --reverse)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load
from ..errors import ConfigError

DEFAULT_CONFIG = Path("experiments") / "nami_2b_official.yaml"


def default_config() -> Path:
    """experiments/nami_2b_official.yaml here, else the one in the kit's own checkout."""
    here = DEFAULT_CONFIG
    return here if here.is_file() else Path(__file__).resolve().parents[3] / DEFAULT_CONFIG


def cmd_convert_official(args: argparse.Namespace) -> int:
    """Released NAMI-2B checkpoint (diffusers Flux layout + bridge_flow.bin) -> kit weights, or back."""
    from ..artifacts.convert import convert_official, convert_to_official

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():  # only overrides were given
        config, overrides = None, [config, *overrides]
    cfg = load(config or default_config(), overrides)
    if args.reverse:
        report = convert_to_official(cfg, args.transformer, args.bridge, args.out)
    else:
        if not args.bridge:
            raise ConfigError("--bridge", "the release's bridge_flow.bin is needed (the scalar_bias bridge)")
        report = convert_official(cfg, args.transformer, args.bridge, args.out)
    m = cfg.model
    print(f"converted {report.parameters:,} parameters ({m.double_blocks} double + {m.single_blocks} single "
          f"blocks, stages {'/'.join(map(str, m.stage_depths))})")  # fmt: skip
    for path in report.files:
        print(f"wrote {path}")
    return 0


def add_commands(sub) -> None:
    convert = sub.add_parser("convert", help="convert checkpoints between layouts")
    kinds = convert.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    official = kinds.add_parser("official", help=cmd_convert_official.__doc__.splitlines()[0])
    official.add_argument("config", nargs="?", help=f"experiment YAML (default {DEFAULT_CONFIG})")
    official.add_argument("overrides", nargs="*", metavar="key=value", help="omegaconf dotlist overrides")
    official.add_argument("--transformer", required=True,
                          help="the release's transformer state dict (.bin/.pt/.safetensors or its folder); "
                               "with --reverse the kit's weights.safetensors or its directory")  # fmt: skip
    official.add_argument("--bridge", help="the release's bridge_flow.bin; with --reverse the kit's "
                                           "bridges.safetensors (default: beside the weights)")  # fmt: skip
    official.add_argument("--out", required=True, help="a new (or empty) output directory")
    official.add_argument("--reverse", action="store_true",
                          help="kit weights -> the release's file layout")  # fmt: skip
    official.set_defaults(func=cmd_convert_official)
