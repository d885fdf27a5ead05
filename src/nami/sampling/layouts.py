"""`nami sample --prompts`: a prompt file sampled into a benchmark's directory layout, resumably.

Layouts (`--out` is OUT; prompt i, image j of N per prompt):

    geneval  OUT/<i:05d>/metadata.jsonl        the prompt's JSON object, as GenEval's generator writes it
             OUT/<i:05d>/samples/<j:04d>.png   what GenEval's evaluate_images.py walks (folders named by
                                               digits, `\\d+\\.png` under samples/)
    dpg      OUT/images/<id>.png               DPG-Bench: one image per prompt id holding its N <= 4 images
                                               in a 2-column grid without padding, the cells compute_dpg_bench.py
                                               crops (--image-root-path OUT/images --resolution <side>
                                               --pic-num N); the single images are kept in OUT/samples/<i:05d>/
    flat     OUT/<k:06d>.png                   k = i * N + j

and in every layout OUT/index.jsonl (one line per image: file, prompt_index, image_index, seed, prompt, id and
the prompt's JSON object as `metadata`, written when every image is there) and OUT/nami-sample.json, the
record of what the directory holds (prompt file digest, seed, images per prompt, layout, sampler settings,
model identity and a fingerprint of the weights).

Resuming. Every image is written atomically (a hidden partial file renamed into place), so an image file is
either whole or absent. The images are sampled in fixed batches of consecutive images, prompt-major; a run
into a directory that already holds this record skips every batch whose images are all there, and samples a
batch with any image missing again, whole, writing only its missing images. An image depends on its seed only
(`image_seed`), and a batch is always the same batch, so a killed and resumed run leaves every image equal, bit
for bit, to an uninterrupted run's. A directory holding another record, or files that are not a run's, is
refused in one line. A lock (OUT/.lock) keeps two processes out of one directory. A stop signal (SIGTERM,
SIGUSR1: nami.signals) ends the run after the current batch, its images written, in one line (exit 143 / 138);
the same command continues it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..artifacts.files import write_atomically
from ..artifacts.layout import identity
from ..artifacts.lock import RunLock
from ..config import ConfigError, NamiConfig, to_dict
from ..errors import Interrupted
from ..signals import AFTER_BATCH, deferring_stop, stop_requested, stop_signal
from .images import save_png
from .prompts import PromptEntry, check_ids, image_seed, prompts_digest

LAYOUTS = ("geneval", "dpg", "flat")
RECORD, INDEX, LOCK = "nami-sample.json", "index.jsonl", ".lock"
RECORD_FORMAT = 1
DPG_MAX_IMAGES = 4  # compute_dpg_bench.py crops at most a 2 x 2 grid
MAX_IMAGES = 10_000_000  # per output directory (COCO-30k at 4 images per prompt is 120,000)
SEED_RULE = "sha256('<seed>:<prompt_index>:<image_index>')[:8] >> 1"


def weights_fingerprint(*modules: torch.nn.Module | None) -> str:
    """A cheap fingerprint of weights as loaded (not a cryptographic hash): every tensor's name, shape, dtype,
    float64 sum and norm. Another checkpoint of the same model gives another fingerprint."""
    digest = hashlib.sha256()
    for m, module in enumerate(modules):
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in module.state_dict().items():
            t = tensor.detach()
            digest.update(f"{m}:{name}:{tuple(t.shape)}:{t.dtype}:".encode())
            if t.is_floating_point() and t.numel():
                sums = (t.sum(dtype=torch.float64), torch.linalg.vector_norm(t, dtype=torch.float64))
                digest.update(f"{float(sums[0])!r}:{float(sums[1])!r};".encode())
            else:  # integer buffers are small: their values themselves
                digest.update(t.cpu().contiguous().view(-1).numpy().tobytes())
    return digest.hexdigest()[:32]


def sampling_record(pipeline, cfg: NamiConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides the images besides the prompts and seeds: the model's identity keys, the resolved sampler
    settings, the device type, the loaded adapters and a fingerprint of the weights (plus `extra`)."""
    return {
        "config": identity(to_dict(cfg)),  # the model keys: config.model.width, config.flow.gamma, ...
        "sampler": asdict(pipeline.settings),
        "device": pipeline.device.type,
        "lora": dict(pipeline.lora_scales),
        "weights": weights_fingerprint(pipeline.model, pipeline.flow.bridge, pipeline.text_encoder),
        **(extra or {}),
    }


@dataclass
class PromptRun:
    """One prompt file sampled into `out` in `layout`, `images_per_prompt` images per prompt (module docstring)."""

    out: Path
    entries: list[PromptEntry]
    layout: str = "flat"
    images_per_prompt: int = 1
    seed: int = 0
    key: str = "--out"
    size: tuple[int, int] | None = None  # (height, width) in pixels; None: the config's resolution

    def __post_init__(self):
        self.out = Path(self.out)
        if self.layout not in LAYOUTS:
            raise ConfigError("--layout", f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if len(self.entries) * self.images_per_prompt > MAX_IMAGES:
            raise ConfigError("--images-per-prompt", f"{len(self.entries):,} prompts x {self.images_per_prompt:,} "
                                                     f"images is more than {MAX_IMAGES:,} in one directory")  # fmt: skip
        if self.layout == "dpg":
            if self.images_per_prompt > DPG_MAX_IMAGES:
                raise ConfigError("--images-per-prompt", f"DPG-Bench's scorer reads at most {DPG_MAX_IMAGES} "
                                                         f"images per prompt (a 2 x 2 grid), got "
                                                         f"{self.images_per_prompt}")  # fmt: skip
            check_ids(self.entries)
        self._width = max(6, len(str(len(self.entries) * self.images_per_prompt - 1)))

    # ---- names -------------------------------------------------------------------------------------------
    def relpath(self, entry: PromptEntry, j: int) -> str:
        """Where image j of `entry` goes, relative to `out`."""
        if self.layout == "geneval":
            return f"{entry.index:05d}/samples/{j:04d}.png"
        if self.layout == "dpg":
            return f"samples/{entry.index:05d}/{j:04d}.png"
        return f"{entry.index * self.images_per_prompt + j:0{self._width}d}.png"

    def path(self, entry: PromptEntry, j: int) -> Path:
        return self.out / self.relpath(entry, j)

    def image_seed(self, entry: PromptEntry, j: int) -> int:
        return image_seed(self.seed, entry.index, j)

    def jobs(self) -> list[tuple[PromptEntry, int]]:
        """Every image, prompt-major: the order batches are cut from."""
        return [(entry, j) for entry in self.entries for j in range(self.images_per_prompt)]

    def settings(self) -> dict[str, Any]:
        """The part of the record known before any model is built."""
        return {"format": RECORD_FORMAT, "prompts": prompts_digest(self.entries), "prompt_count": len(self.entries),
                "layout": self.layout, "images_per_prompt": self.images_per_prompt, "seed": self.seed,
                "seed_rule": SEED_RULE}  # fmt: skip

    # ---- the directory's record --------------------------------------------------------------------------
    def check(self, record: dict[str, Any]) -> bool:
        """Whether `out` already holds a run; refuses (one line) a run with another record, or a directory
        holding anything else. Only the keys of `record` are compared (settings first, then the full record)."""
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(self.key, f"{self.out} is a file, not a directory")
        recorded_path = self.out / RECORD
        if not recorded_path.is_file():
            ours = lambda name: name == LOCK or name.startswith(f".{RECORD}.partial-")  # noqa: E731 - a killed claim
            others = [p.name for p in self.out.iterdir() if not ours(p.name)] if self.out.is_dir() else []
            if others:
                raise ConfigError(self.key, f"{self.out} is not empty and holds no {RECORD} (not a `nami sample "
                                            "--prompts` directory): name a new or empty directory")  # fmt: skip
            return False
        try:
            recorded = json.loads(recorded_path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(self.key, f"{recorded_path} is unreadable ({err}); name another directory") from None
        old, new = _flat(recorded), _flat(record)
        for name in new:
            if old.get(name, _ABSENT) != new[name]:
                what = "another prompt file" if name in ("prompts", "prompt_count") else "other settings"
                raise ConfigError(self.key, f"{self.out} holds a run with {name}={_short(old.get(name))}, this call "
                                            f"has {_short(new[name])} ({what}): use another --out, or the same "
                                            "arguments to continue it")  # fmt: skip
        return True

    def claim(self, record: dict[str, Any]) -> None:
        """Write `record` into a new or empty `out`, or check it against the one there; remove partial files a
        killed run left. Call with the lock held."""
        if not self.check(record):
            write_atomically(self.out / RECORD, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
        for partial in self.out.rglob(".*.partial-*"):  # written by a process of ours that was killed
            if partial.is_file():
                partial.unlink()

    def lock(self) -> RunLock:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(self.key, f"cannot make {self.out} ({err.strerror or err})") from None
        return RunLock(self.out / LOCK, key=self.key)

    # ---- sampling ----------------------------------------------------------------------------------------
    def missing_batches(self, batch_size: int) -> list[list[tuple[PromptEntry, int]]]:
        jobs = self.jobs()
        batches = [jobs[k : k + batch_size] for k in range(0, len(jobs), batch_size)]
        return [b for b in batches if not all(self.path(e, j).is_file() for e, j in b)]

    def sample(self, pipeline, batch_size: int, progress: bool = True) -> dict[str, int]:
        """Sample every missing image (module docstring), then write the per-prompt files and the index.
        Returns counts: images written now, images that were there, all images."""
        todo = self.missing_batches(batch_size)
        total = len(self.entries) * self.images_per_prompt
        kept = total - sum(not self.path(e, j).is_file() for batch in todo for e, j in batch)
        written = 0
        bar = tqdm(todo, desc="sampling", unit="batch", disable=not progress or not todo, dynamic_ncols=True)
        with deferring_stop(AFTER_BATCH):
            for n, batch in enumerate(bar):
                self._before(batch)
                height, width = self.size or (None, None)
                result = pipeline.sample([e.prompt for e, _ in batch], seed=[self.image_seed(e, j) for e, j in batch],
                                         batch_size=len(batch), height=height, width=width)  # fmt: skip
                for (entry, j), image in zip(batch, result.images):
                    path = self.path(entry, j)
                    if not path.is_file():  # never replace an image that is there
                        write_atomically(path, lambda p, image=image: save_png(image, p))
                        written += 1
                self._after(batch)
                if stop_requested() and n + 1 < len(todo):  # every image so far is whole: stop here
                    bar.close()
                    raise Interrupted(stop_signal(), f"{kept + written} of {total} images are in {self.out}; the "
                                                     "same command continues")  # fmt: skip
        self.finish()
        return {"written": written, "kept": kept, "images": total}

    def _before(self, batch) -> None:
        """GenEval: a prompt's metadata.jsonl before its first image (exactly the line GenEval's generator
        writes: `json.dump` of the prompt's object)."""
        if self.layout != "geneval":
            return
        for entry in {e.index: e for e, _ in batch}.values():
            path = self.out / f"{entry.index:05d}" / "metadata.jsonl"
            if not path.is_file():
                write_atomically(path, lambda p, record=entry.record: p.write_text(json.dumps(record)))

    def _after(self, batch) -> None:
        if self.layout == "dpg":
            for entry in {e.index: e for e, _ in batch}.values():
                self._dpg_grid(entry)

    def _dpg_grid(self, entry: PromptEntry) -> None:
        """OUT/images/<id>.png once every image of the prompt is there: 2 columns, no padding, row-major (the
        crops compute_dpg_bench.py takes: top-left, top-right, bottom-left, bottom-right)."""
        path = self.out / "images" / f"{entry.id}.png"
        paths = [self.path(entry, j) for j in range(self.images_per_prompt)]
        if path.is_file() or not all(p.is_file() for p in paths):
            return
        images = [Image.open(p).convert("RGB") for p in paths]
        width, height = images[0].size
        columns = min(2, len(images))
        grid = Image.new("RGB", (columns * width, -(-len(images) // columns) * height))
        for n, image in enumerate(images):
            grid.paste(image, ((n % columns) * width, (n // columns) * height))
        write_atomically(path, lambda p: grid.save(p, format="PNG"))

    def finish(self) -> None:
        """The per-prompt files a killed run may have missed, and the index, once every image is there."""
        if any(not self.path(e, j).is_file() for e, j in self.jobs()):
            return
        if self.layout == "dpg":
            for entry in self.entries:
                self._dpg_grid(entry)
        lines = [json.dumps({"file": self.relpath(e, j), "prompt_index": e.index, "image_index": j,
                             "seed": self.image_seed(e, j), "prompt": e.prompt, "id": e.id, "metadata": e.record},
                            ensure_ascii=False) for e, j in self.jobs()]  # fmt: skip
        text = "\n".join(lines) + "\n"
        index = self.out / INDEX
        if not index.is_file() or index.read_text() != text:
            write_atomically(index, lambda p: p.write_text(text))


_ABSENT = object()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested dicts (`model.width`, `sampler.steps`), as JSON reads them back (tuples as lists)."""
    if isinstance(tree, dict) and tree:  # an empty dict is a value of its own (no adapters)
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.loads(json.dumps(tree))}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def run_prompt_file(pipeline_factory, run: PromptRun, record_extra, batch_size: int, progress: bool = True):
    """Lock `run.out`, check the cheap settings, build the pipeline (`pipeline_factory()`), claim the directory
    with the full record (`record_extra(pipeline)` added to `run.settings()`), sample what is missing."""
    with run.lock():
        run.check(run.settings())  # a wrong directory costs nothing: refused before any model is built
        pipeline = pipeline_factory()
        run.claim({**run.settings(), **record_extra(pipeline)})
        return run.sample(pipeline, batch_size, progress)


def read_index(out: Path, key: str = "DIR") -> list[dict[str, Any]]:
    """The images of a finished `nami sample --prompts` directory, one dict per image (index.jsonl)."""
    index = Path(out) / INDEX
    if not index.is_file():
        if (Path(out) / RECORD).is_file():
            raise ConfigError(key, f"{out} is not finished ({INDEX} is written when every image is there): run the "
                                   "same `nami sample` again to complete it")  # fmt: skip
        raise ConfigError(key, f"{out} has no {INDEX}")
    rows = []
    for number, line in enumerate(index.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            rows.append({**row, "path": Path(out) / row["file"]})
        except (ValueError, KeyError, TypeError):
            raise ConfigError(key, f"{index}:{number} is not an index line") from None
    return rows


def prompted_images(folder: str | Path, key: str = "DIR") -> list[tuple[Path, str]]:
    """(image, prompt) pairs of a folder written by `nami sample --prompts` (its index.jsonl, any layout) or in
    GenEval's layout (`<digits>/metadata.jsonl` with a "prompt", images `<digits>/samples/<digits>.png`, walked
    as GenEval's evaluate_images.py walks it), in order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(key, f"image folder {folder} does not exist")
    if (folder / INDEX).is_file():
        return [(row["path"], str(row["prompt"])) for row in read_index(folder, key)]
    pairs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        try:
            prompt = json.loads((sub / "metadata.jsonl").read_text())["prompt"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(key, f"{sub}/metadata.jsonl holds no prompt") from None
        samples = sub / "samples"
        names = sorted(p.name for p in samples.iterdir() if p.is_file()) if samples.is_dir() else []
        pairs += [(samples / name, str(prompt)) for name in names if re.match(r"\d+\.png", name)]
    if not pairs:
        raise ConfigError(key, f"{folder} holds no prompted images: neither an {INDEX} (nami sample --prompts) nor "
                               "GenEval's <digits>/metadata.jsonl + samples/<digits>.png")  # fmt: skip
    return pairs
