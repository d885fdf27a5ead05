"""Held-out MSE of the rules a position-holding bridge (scalar_bias) can follow at other sizes, on mixed-aspect
data (README, "Aspect-ratio buckets").

GenEval-Shapes scenes are rendered at every bucket of `data.buckets=auto` for the tiny pixel config (resolution
64 by default: 32x128 ... 128x32), each resized to cover its bucket and centre-cropped; bridge pairs come from
the flow's own pyramid (`PyramidFlow.bridge_pairs`), fitted on one set of scenes and scored on another:

  square fit, resized   fitted on the square bucket alone (as the released bridge was), its map resized
  mixed fit, resized    the kit's rule: one map fitted on every bucket in normalised coordinates, resized
  one map per bucket    a scalar_bias per bucket, built at that bucket's stage grids, fitted on its data alone
  conv1x1               the position-free linear kind (C x C and a bias per channel), fitted on every bucket
  identity              Up alone (no fit)

    PYTHONPATH=src:. python scripts/bridge_bucket_rules.py [--resolution 64] [--fit 192] [--heldout 96] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from nami.bridges import build_bridge, fit_closed_form, squared_errors
from nami.config import load
from nami.config.buckets import Bucket, bucket_table
from nami.eval.shapes import make_spec, render
from nami.flow import PyramidFlow, PyramidSchedule

RULES = ("square fit, resized", "mixed fit, resized", "one map per bucket", "conv1x1", "identity")


def cover_crop(image: Image.Image, bucket: Bucket) -> Image.Image:
    """Resize to cover the bucket and centre-crop the rest (the least cropping at that size)."""
    scale = max(bucket.width / image.width, bucket.height / image.height)
    w, h = max(bucket.width, round(image.width * scale)), max(bucket.height, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - bucket.width) // 2, (h - bucket.height) // 2
    return image.crop((left, top, left + bucket.width, top + bucket.height))


def scenes(bucket: Bucket, resolution: int, start: int, count: int, seed: int) -> torch.Tensor:
    """(count, 3, height, width) in [-1, 1]: scenes start.. drawn at the bucket's aspect ratio."""
    specs = [make_spec(i, seed, resolution, bucket.aspect) for i in range(start, start + count)]
    images = [cover_crop(render(spec), bucket) for spec in specs]
    return torch.stack([pil_to_tensor(im).float() / 127.5 - 1 for im in images])


def pairs_of(flow: PyramidFlow, x: torch.Tensor, seed: int, batch: int = 32) -> list:
    """Bridge pairs (u, y, k) of every transition, batch by batch, one noise draw per batch."""
    g = torch.Generator().manual_seed(seed)
    return [p for i in range(0, len(x), batch) for p in flow.bridge_pairs(x[i : i + batch], g)]


def compare(resolution: int = 64, fit: int = 192, heldout: int = 96, seed: int = 0) -> dict:
    cfg = load("experiments/tiny.yaml", ["text_encoder.kind=learned", f"resolution={resolution}", "data.buckets=auto"])
    schedule = PyramidSchedule.from_config(cfg.flow)
    flow = PyramidFlow.from_config(cfg, None, schedule)
    table, channels, sides = bucket_table(cfg), cfg.autoencoder.channels, cfg.stage_latent_sizes()
    train = {b: pairs_of(flow, scenes(b, resolution, 0, fit, seed), seed) for b in table}
    test = {b: pairs_of(flow, scenes(b, resolution, fit, heldout, seed), seed + 1) for b in table}
    everything = [p for b in table for p in train[b]]
    square = Bucket(resolution, resolution)

    bridges = {name: {} for name in RULES}
    shared = {"square fit, resized": ("scalar_bias", train[square]), "mixed fit, resized": ("scalar_bias", everything),
              "conv1x1": ("conv1x1", everything), "identity": ("identity", None)}  # fmt: skip
    for name, (kind, pairs) in shared.items():
        bridge = build_bridge(kind, schedule, channels, sides)
        if pairs is not None:
            fit_closed_form(bridge, pairs)
        bridges[name] = dict.fromkeys(table, bridge)
    for b in table:  # a map per bucket, at that bucket's own stage grids
        bridge = build_bridge("scalar_bias", schedule, channels, b.latent_shapes(cfg))
        fit_closed_form(bridge, train[b])
        bridges["one map per bucket"][b] = bridge

    report = {"resolution": resolution, "fit_per_bucket": fit, "heldout_per_bucket": heldout,
              "buckets": [b.name for b in table], "mse": {}}  # fmt: skip
    for name in RULES:
        per_bucket, total = {}, {}
        for b in table:
            errors = squared_errors(bridges[name][b], test[b])
            per_bucket[b.name] = {f"transition_{k}": (sse / n).item() for k, (sse, n) in errors.items()}
            for k, (sse, n) in errors.items():
                prev = total.get(k, (0.0, 0))
                total[k] = (prev[0] + sse.item(), prev[1] + n)
        report["mse"][name] = {"all": {f"transition_{k}": s / n for k, (s, n) in sorted(total.items())},
                               "per_bucket": per_bucket}  # fmt: skip
    return report


def format_report(report: dict) -> str:
    names = report["buckets"]
    lines = [f"held-out bridge MSE, tiny pixel config at {report['resolution']} px, buckets {', '.join(names)} "
             f"({report['fit_per_bucket']} fit / {report['heldout_per_bucket']} held-out scenes per bucket)",
             f"{'rule':<22} {'transition':>10} {'all':>9} " + " ".join(f"{n:>9}" for n in names)]  # fmt: skip
    for rule, mse in report["mse"].items():
        for t in mse["all"]:
            row = " ".join(f"{mse['per_bucket'][n][t]:>9.5f}" for n in names)
            lines.append(f"{rule:<22} {t[-1]:>10} {mse['all'][t]:>9.5f} {row}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--fit", type=int, default=192, help="fitting scenes per bucket")
    parser.add_argument("--heldout", type=int, default=96, help="held-out scenes per bucket")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = compare(args.resolution, args.fit, args.heldout, args.seed)
    print(json.dumps(result) if args.json else format_report(result))
