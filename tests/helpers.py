"""Constants and small utilities shared by the tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

# The tiny preset with the trainable byte-level text encoder: no model files to load.
LEARNED_TEXT = ["text_encoder.kind=learned", "text_encoder.dim=64", "text_encoder.pooled_dim=64"]



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
