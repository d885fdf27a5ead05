"""`nami export`: a run's EMA weights as a self-describing model directory (nami.artifacts.export, nami.artifacts.model_dir)."""

from __future__ import annotations

import argparse
import json


def cmd_export(args: argparse.Namespace) -> int:
    """Write a model directory (config.json, model.safetensors, bridges.safetensors, README.md) from a run."""
    from ..artifacts.export import export_merged, export_run

    export = export_merged(args.run, args.out) if args.merge_lora else export_run(args.run, args.out)
    if args.json:
        print(json.dumps({"path": str(export.path), "step": export.step, "written": export.written}))
    else:
        step = f"step {export.step}" if export.step is not None else "weights without a step"
        done = "" if export.written else "already there; nothing written"
        print(f"model directory: {export.path} ({step}{'; ' + done if done else ''})")
    return 0


def add_commands(sub) -> None:
    export = sub.add_parser("export", help=cmd_export.__doc__.splitlines()[0])
    export.add_argument("run", metavar="RUN", help="a run directory (runs/<name>), or one of its checkpoints")
    export.add_argument("--out", help="a new (or empty) directory; default: RUN/export/NNNN, numbered, unless the "
                                      "newest there already holds these weights")  # fmt: skip
    export.add_argument("--merge-lora", action="store_true",
                        help="RUN is a LoRA run (or its model directory): write a plain model directory with the "
                             "adapter merged into the base weights")  # fmt: skip
    export.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    export.set_defaults(func=cmd_export)
