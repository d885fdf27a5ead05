"""`nami eval fid` and `nami eval clip`: FID and CLIP score of image folders.

Why this shape: `nami eval [CONFIG] --ckpt X` scores a model and stays as it is; `fid` and `clip` as its first
word score folders instead (`cli.main` routes a call whose first two words are `eval fid` / `eval clip`
here). A CONFIG is a YAML path, never the bare word `fid` or `clip`, so no existing call changes meaning.
"""

from __future__ import annotations

import argparse
import json

from .common import positive_int

METRICS = ("fid", "clip")


def is_metric_call(argv: list[str]) -> bool:
    return len(argv) >= 2 and argv[0] == "eval" and argv[1] in METRICS


def _device(text: str | None) -> str:
    import torch

    return text or ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_fid(args: argparse.Namespace) -> int:
    """FID of a folder against a reference folder or precomputed statistics (.npz)."""
    from ..artifacts.files import write_atomically
    from ..config import ConfigError
    from ..eval.fid import folder_statistics, frechet_distance, image_files, load_inception, reference_statistics

    if args.reference is None and args.save_stats is None:
        raise ConfigError("REFERENCE", "give a reference folder or .npz statistics (or --save-stats FILE to only "
                                       "write DIR's statistics)")  # fmt: skip
    if args.save_stats is not None and not str(args.save_stats).endswith(".npz"):
        raise ConfigError("--save-stats", f"{args.save_stats}: statistics are written as .npz")
    files = sample_files(args.dir)  # bad folders cost nothing: checked before the network is built
    if args.reference is not None and not str(args.reference).endswith(".npz"):
        image_files(args.reference, "REFERENCE")
    device = _device(args.device)
    network = load_inception(args.weights, "--weights")
    generated = folder_statistics(files, network, args.batch_size, device, "DIR")
    report = {"images": generated.count}
    if args.save_stats is not None:
        report["statistics"] = str(write_atomically(args.save_stats, generated.save))
    if args.reference is not None:
        reference = reference_statistics(args.reference, network, args.batch_size, device, "REFERENCE")
        report.update(fid=frechet_distance(reference, generated), reference_images=reference.count or None)
    if args.json:
        print(json.dumps(report))
    elif "fid" in report:
        count = f"{report['reference_images']} images" if report["reference_images"] else "statistics"
        print(f"FID {report['fid']:.4f}  ({args.dir}: {report['images']} images; {args.reference}: {count})")
    else:
        print(f"{report['statistics']}: statistics of {report['images']} images")
    return 0


def sample_files(folder) -> list:
    """The images of DIR: those its index.jsonl lists when `nami sample --prompts` wrote it (so DPG-Bench grids
    are not counted with the single images), else every image file below it."""
    from ..eval.fid import check_image_count, image_files
    from ..sampling.layouts import INDEX, read_index

    if (folder / INDEX).is_file():
        return check_image_count([row["path"] for row in read_index(folder, "DIR")], folder, "DIR")
    return image_files(folder, "DIR")


def cmd_clip(args: argparse.Namespace) -> int:
    """CLIP score (torchmetrics: mean of 100 * max(cos, 0)) of a folder's images against their prompts."""
    from ..config import ConfigError
    from ..eval.fid import read_rgb
    from ..eval.metrics import clip_score
    from ..sampling.layouts import prompted_images

    pairs = prompted_images(args.dir, "DIR")
    if not (args.clip / "config.json").is_file():
        raise ConfigError("--clip", f"{args.clip} is not a CLIP model directory (config.json + processor files)")
    images = (read_rgb(path, "DIR") for path, _ in pairs)
    score, _ = clip_score(images, [prompt for _, prompt in pairs], args.clip, args.batch_size, _device(args.device))
    if args.json:
        print(json.dumps({"clip_score": score, "images": len(pairs)}))
    else:
        print(f"CLIP score {score:.4f}  ({args.dir}: {len(pairs)} images)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="nami eval", description="FID and CLIP score of image folders.")
    sub = parser.add_subparsers(dest="metric", required=True, metavar="METRIC")
    fid = sub.add_parser("fid", help=cmd_fid.__doc__, description=cmd_fid.__doc__)
    fid.add_argument("dir", type=Path, help="images to score (a `nami sample --prompts` directory: the images of "
                                            "its index.jsonl; else every png/jpg/jpeg/webp below it)")
    fid.add_argument("reference", type=Path, nargs="?", help="reference image folder, or .npz statistics "
                                                             "(mu, sigma: pytorch-fid / clean-fid / TTUR)")
    fid.add_argument("--weights", type=Path, required=True,
                     help="FID Inception weights: torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
                          "(or its tensors as .safetensors)")  # fmt: skip
    fid.add_argument("--save-stats", type=Path, metavar="FILE.npz", help="also write DIR's statistics")
    fid.set_defaults(func=cmd_fid)
    clip = sub.add_parser("clip", help=cmd_clip.__doc__, description=cmd_clip.__doc__)
    clip.add_argument("dir", type=Path, help="a `nami sample --prompts` directory, or one in GenEval's layout")
    clip.add_argument("--clip", type=Path, required=True, help="local CLIPModel + CLIPProcessor directory "
                                                               "(e.g. openai/clip-vit-large-patch14, saved)")
    clip.set_defaults(func=cmd_clip)
    for metric in (fid, clip):
        metric.add_argument("--batch-size", type=positive_int, default=32)
        metric.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
        metric.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser
