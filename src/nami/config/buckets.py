"""Aspect-ratio buckets: image sizes (height, width) in pixels on which every stage's grid is whole.

A pyramid needs more of a bucket than a one-stage model does: stage 0 works at 1 / 2^(K-1) of the full latent,
so a side is usable only when it divides by autoencoder.downsample x model.patch_size x 2^(K-1) (`grid_step`:
16 for the tiny pixel config, 64 for NAMI-2B). `data.buckets` names the table (`bucket_table`):

    square   one bucket, resolution x resolution: the kit's behaviour before buckets, exactly
    auto     about resolution^2 pixels each, aspect ratios 1:4 to 4:1, every side on the grid (`auto_buckets`)
    [[h, w], ...]  an explicit list, checked by `check_buckets` (on the grid, within the memory bound)

`eval.size` names the size evaluations sample at (`eval_size`, checked by `check_eval_size`).

Each sample goes to the bucket nearest its aspect ratio (`nearest_bucket`). This module imports nothing but
the config, so the data side, the models, the sampler and the FLOP model read one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

BUCKET_CHOICES = ("square", "auto")  # or a list of [height, width]
AUTO_MAX_ASPECT = 4  # auto: aspect ratios from 1:AUTO_MAX_ASPECT to AUTO_MAX_ASPECT:1
AUTO_SHORT_SIDES = 9  # auto: at most this many shorter sides, evenly spread over [resolution / 2, resolution]
# Every dataloader worker keeps one pending batch per bucket (up to data.batch_size - 1 samples waiting for
# their bucket to fill), so the data pipeline's memory grows with the table's length.
MAX_BUCKETS = 64


@dataclass(frozen=True)
class Bucket:
    """One image size in pixels."""

    height: int
    width: int

    @property
    def aspect(self) -> float:
        """width / height (2.0 is a landscape 2:1)."""
        return self.width / self.height

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def name(self) -> str:
        return f"{self.height}x{self.width}"

    def latent_shapes(self, cfg) -> list[tuple[int, int]]:
        """The latent (height, width) of every stage, coarsest first."""
        return stage_latent_shapes(cfg, self.height, self.width)

    def as_list(self) -> list[int]:
        return [self.height, self.width]


def grid_step_of(downsample: int, patch_size: int, num_stages: int) -> int:
    """Pixels a side must divide by: the coarsest stage's latent (1 / 2^(K-1) of the full one) holds whole
    patches, and every finer stage is twice the one before."""
    return downsample * patch_size * 2 ** (num_stages - 1)


def grid_step(cfg) -> int:
    """`grid_step_of` for a config (autoencoder.downsample, model.patch_size, the number of stages)."""
    return grid_step_of(cfg.autoencoder.downsample, cfg.model.patch_size, cfg.num_stages)


def stage_latent_shapes(cfg, height: int, width: int) -> list[tuple[int, int]]:
    """Latent (height, width) of each stage for an image of height x width pixels, coarsest first (the
    rectangular form of `NamiConfig.stage_latent_sizes`)."""
    k, down = cfg.num_stages, cfg.autoencoder.downsample
    return [(height // down // 2 ** (k - 1 - s), width // down // 2 ** (k - 1 - s)) for s in range(k)]


def auto_buckets(resolution: int, step: int) -> list[Bucket]:
    """Buckets of at most resolution^2 pixels (the square's memory), aspect ratios 1:4 to 4:1, sides on the grid.

    The shorter side runs down from `resolution` to resolution / 2 (a 1:4 bucket of the same area) in at most
    AUTO_SHORT_SIDES even steps of the grid; the longer side is the largest multiple of `step` that keeps the area
    within resolution^2. Each landscape bucket comes with its portrait twin; sorted by aspect ratio (width /
    height), portrait first. `resolution` must be a multiple of `step` (validation checks it)."""
    area = resolution * resolution
    lowest = math.ceil(resolution / math.sqrt(AUTO_MAX_ASPECT) / step) * step
    intervals = (resolution - lowest) // step
    stride = step * max(1, math.ceil(intervals / (AUTO_SHORT_SIDES - 1)))
    table = set()
    for short in range(resolution, lowest - 1, -stride):
        long = area // short // step * step  # >= resolution >= short, and <= 4 short since short >= resolution / 2
        table |= {Bucket(short, long), Bucket(long, short)}
    return sorted(table, key=lambda b: b.aspect)


def bucket_table(cfg) -> list[Bucket]:
    """The buckets `data.buckets` names (validated at load time), sorted by aspect ratio."""
    setting = cfg.data.buckets
    if setting == "square":
        return [Bucket(cfg.resolution, cfg.resolution)]
    if setting == "auto":
        return auto_buckets(cfg.resolution, grid_step(cfg))
    return sorted((Bucket(int(h), int(w)) for h, w in setting), key=lambda b: b.aspect)


def nearest_bucket(table: list[Bucket], height: float, width: float) -> Bucket:
    """The bucket whose aspect ratio is nearest an image's (height, width in any unit), on a log scale (1:2 and
    2:1 are equally far from 1:1). A tie goes to the larger bucket, then to the narrower one."""
    if not (height > 0 and width > 0 and math.isfinite(height) and math.isfinite(width)):
        raise ValueError(f"an image size must be positive, got {height} x {width}")
    target = math.log(width / height)
    return min(table, key=lambda b: (round(abs(math.log(b.aspect) - target), 12), -b.pixels, b.aspect))


def nearest_on_grid(side: int, step: int) -> list[int]:
    """The valid sides nearest `side` (one when it lies on the grid, else the one below, if any, and above)."""
    below, above = side // step * step, -(-side // step) * step
    return sorted({s for s in (below, above) if s >= step})


def check_image_size(height: int, width: int, step: int, max_side: int,
                     keys: tuple[str, str] = ("height", "width")) -> None:  # fmt: skip
    """An image size to sample or train at: both sides in [step, max_side] and multiples of `step`; otherwise one
    ConfigError line naming the key and the nearest valid sizes."""
    for key, side in zip(keys, (height, width)):
        if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= max_side:
            raise ConfigError(key, f"must be a whole number of pixels in [1, {max_side}], got {side!r}")
        if side % step:
            valid = " or ".join(map(str, nearest_on_grid(side, step)))
            raise ConfigError(key, f"{side} px is off the stage grid: sides must be multiples of {step} (autoencoder "
                                   f"downsampling x patch x 2^(stages-1), so every stage's grid is whole); "
                                   f"nearest valid: {valid}")  # fmt: skip


def check_buckets(cfg, max_side: int) -> None:
    """`data.buckets` is square, auto or a list of at most MAX_BUCKETS distinct [height, width] on the stage grid,
    none larger than resolution^2 pixels; otherwise one ConfigError line naming the entry."""
    setting, key = cfg.data.buckets, "data.buckets"
    if isinstance(setting, str):
        if setting not in BUCKET_CHOICES:
            raise ConfigError(key, f"unknown value {setting!r}; choose square, auto or a list of [height, width]")
        return
    if not isinstance(setting, (list, tuple)) or not setting:
        raise ConfigError(key, f"must be square, auto or a non-empty list of [height, width]; got {setting!r}")
    if len(setting) > MAX_BUCKETS:
        raise ConfigError(key, f"lists {len(setting)} buckets, at most {MAX_BUCKETS}: every dataloader worker keeps a "
                               "pending batch per bucket (up to data.batch_size - 1 samples), so the table's length "
                               "multiplies the data pipeline's memory")  # fmt: skip
    step, budget, seen = grid_step(cfg), cfg.resolution**2, set()
    for i, pair in enumerate(setting):
        entry = f"{key}[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(entry, f"must be [height, width] in pixels, got {pair!r}")
        check_image_size(pair[0], pair[1], step, max_side, (f"{entry} height", f"{entry} width"))
        bucket = Bucket(*pair)
        if bucket.pixels > budget:
            raise ConfigError(entry, f"{bucket.name} is {bucket.pixels:,} pixels, more than resolution^2 = {budget:,}: "
                                     "data.batch_size and the memory plan are sized for resolution^2 pixels a "
                                     "sample, so a larger bucket can run out of memory where the square fits "
                                     "(raise resolution, or shrink the bucket)")  # fmt: skip
        if bucket in seen:
            raise ConfigError(entry, f"{bucket.name} is listed twice")
        seen.add(bucket)


def eval_size(cfg) -> tuple[int, int]:
    """(height, width) in pixels that `nami eval` and the evaluations during training sample at: eval.size, else
    the square resolution."""
    size = cfg.eval.size
    return (int(size[0]), int(size[1])) if size is not None else (cfg.resolution, cfg.resolution)


def check_eval_size(cfg, max_side: int) -> None:
    """`eval.size` is null or [height, width] on the stage grid (any size sampling takes); otherwise one ConfigError
    line naming the key and the nearest valid sizes."""
    size, key = cfg.eval.size, "eval.size"
    if size is None:
        return
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ConfigError(key, f"must be [height, width] in pixels or null, got {size!r}")
    check_image_size(size[0], size[1], grid_step(cfg), max_side, (f"{key} height", f"{key} width"))
