"""Constants and small utilities shared by the tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

# The tiny preset with the trainable byte-level text encoder: no model files to load.
LEARNED_TEXT = ["text_encoder.kind=learned", "text_encoder.dim=64", "text_encoder.pooled_dim=64"]


def tiny_run_overrides(root, shapes) -> list[str]:
    """A 3-step tiny run on `shapes`/*.tar under `root`, with a quickly fitted bridge and 2-step stages."""
    return [*LEARNED_TEXT, f"data.shards={shapes}/*.tar", "data.batch_size=6", "data.num_workers=0",
            f"trainer.default_root_dir={root}", "trainer.accelerator=cpu", "trainer.max_steps=3",
            "bridge.fit_batches=3", "bridge.heldout_batches=1", "log.sample_prompts=[a red circle]",
            "sampler.steps=[2,2,2]", "optim.ema_decay=0.5"]  # fmt: skip


def train_tiny_run(root: Path, extra: list[str]):
    """Synthetic shapes, fitted bridges and 3 trained steps of tiny under `root`: (overrides, config, run dir)."""
    from data_modules.synth import write_shapes
    from nami.config import load
    from nami.lit.runner import pretrain_bridges, train

    write_shapes(root / "shapes", num=60, shards=2, resolution=32)
    args = [*tiny_run_overrides(root, root / "shapes"), *extra]
    cfg = load(EXPERIMENTS / "tiny.yaml", args)
    pretrain_bridges(cfg)
    return args, cfg, train(cfg)


def nami_command(*args: str) -> list[str]:
    """argv for the installed `nami` console script (the one users run)."""
    import sys

    return [str(Path(sys.executable).parent / "nami"), *map(str, args)]


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the run's TensorBoard files: tag -> step -> value (later files win on repeats)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for path in sorted(Path(run_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def tensorboard_image_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for path in Path(run_dir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    return tags
