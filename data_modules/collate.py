"""The batch type the training module consumes (`StageBatch`) and how a list of samples becomes one.

A batch holds samples of one aspect-ratio bucket (the stream batches per bucket, `stream.py`), so every group
stacks; its `size` names the bucket, and pooled groups are the levels of that bucket's data pyramid (stage k at
`nami.config.buckets.stage_latent_shapes` of it).

Joint training splits every batch across stages by the ratios in force at its step, into groups of static
size: largest-remainder rounding of batch_size x ratio / sum (24 at 1:1:1 is 8/8/8; 16 at 1:1:1 is 6/5/5,
ties going to the coarser stage). Which sample lands in which group is a seeded permutation of the batch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from nami.flow import StageMix, data_pyramid
from nami.text_embedding import TextEmbedding

from .records import Sample


@dataclass
class StageBatch:
    """One batch split into stage groups; see `data_modules/__init__.py` for the contract."""

    images: list[torch.Tensor]  # group i: (n_i, 3, side, side) float32 in [-1, 1], or latents (see `latents`)
    captions: list[list[str]]
    keys: list[list[str]]
    metadata: list[list[Any]]  # parsed json (tars) or the row without its image (parquet), per sample
    epochs: list[list[int]]  # the epoch each sample was read in (per rank; see stream.py)
    stages: list[int]  # stage id of group i: range(K) when joint, [K - 1] for full-resolution batches
    step: int  # the training step this batch was built for (its ratios are those in force then)
    ratios: list[float]  # the stage ratios in force at `step`
    pooled: bool  # True: group i is already at stage stages[i]'s side (data pyramid); False: full resolution
    state: dict = field(default_factory=dict, repr=False)  # producing worker's resumable state (internal)
    # Precomputed shards (data.precomputed): text[i] is the stored text embedding of group i, (n_i, L, D) states;
    # None: the batch carries captions only and the module encodes them.
    text: list[TextEmbedding] | None = None
    latents: bool = False  # images hold model-space latents (precomputed); False: pixels, for the autoencoder
    # The bucket of every sample: image (height, width) in pixels (nami.config.buckets); None: resolution^2.
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys)

    @property
    def counts(self) -> list[int]:
        """Samples per group."""
        return [len(k) for k in self.keys]

    def all_keys(self) -> list[str]:
        """Every key of the batch, group by group."""
        return [k for group in self.keys for k in group]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StageBatch:
        """Lightning moves batches with `.to`: images (and stored text) move, the rest stays on the host."""
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> StageBatch:
        return self._map(lambda x: x.pin_memory())

    def _map(self, fn) -> StageBatch:
        text = None if self.text is None else [t.map(fn) for t in self.text]
        return replace(self, images=[fn(x) for x in self.images], text=text)


def stage_counts(batch_size: int, ratios: list[float]) -> list[int]:
    """Largest-remainder split of `batch_size` by `ratios` (ties to the lower stage)."""
    total = float(sum(ratios))
    exact = [batch_size * r / total for r in ratios]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: batch_size - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class BatchPlan:
    """How workers batch samples: size, stages, and whether to split by ratio and pool per stage."""

    batch_size: int
    num_stages: int
    resolution: int
    joint: bool = True  # split into stage groups (training); False: one full-resolution group
    pooled: bool = True  # pixel autoencoder: each group gets its own level of the data pyramid
    mix: StageMix | None = None  # the stage ratios in force at each step (joint plans): the flow's own
    stage_sides: tuple[int, ...] = ()  # pooled groups: image side of each stage (NamiConfig.stage_latent_sizes)
    batches_per_step: int = 1  # gradient accumulation: loader batches per optimizer step
    latents: bool = False  # samples hold model-space latents (precomputed shards), not pixels
    downsample: int = 1  # autoencoder.downsample: pixels per latent (pooled groups are the pixel autoencoder's)

    def __post_init__(self):
        if self.joint and self.mix is None:
            raise ValueError("joint batches are split by the flow's stage mix: pass mix=parts.flow.mix")

    @classmethod
    def from_config(cls, cfg, mix: StageMix | None, joint: bool = True, batches_per_step: int = 1,
                    latents: bool = False) -> BatchPlan:  # fmt: skip
        """`mix`: the `StageMix` of the flow being trained (`PyramidFlow.mix`); only joint plans use it."""
        return cls(
            batch_size=cfg.data.batch_size,
            num_stages=cfg.num_stages,
            resolution=cfg.resolution,
            joint=joint,
            # Pixels of the pixel autoencoder are model space: workers pool them. Precomputed latents reach the
            # module at full size, and it builds their pyramid (JointFlowModule.stage_latents).
            pooled=cfg.autoencoder.kind == "pixel" and not latents,
            mix=mix,
            stage_sides=tuple(cfg.stage_latent_sizes()),
            batches_per_step=batches_per_step,
            latents=latents,
            downsample=cfg.autoencoder.downsample,
        )

    def ratios_at(self, step: int) -> list[float]:
        return self.mix.ratios_at(step)

    def side(self, stage: int) -> int:
        """Image side handed to `stage`'s group (the square bucket)."""
        if not (self.joint and self.pooled):
            return self.resolution
        return self.stage_sides[stage]

    def shape(self, stage: int, size: tuple[int, int] | None) -> tuple[int, int]:
        """(height, width) handed to `stage`'s group for images of bucket `size` (None: the square)."""
        if size is None:
            return self.side(stage), self.side(stage)
        if not (self.joint and self.pooled):
            return size
        factor = self.downsample * 2 ** (self.num_stages - 1 - stage)
        return size[0] // factor, size[1] // factor


def make_batch(
    samples: list[Sample], plan: BatchPlan, step: int, rng: random.Random, state: dict
) -> StageBatch:
    """Group `samples` (one bucket: `Sample.size`) by stage (joint) or keep them as one full-resolution group."""
    last = plan.num_stages - 1
    size = samples[0].size if samples else None
    if plan.joint:
        ratios = plan.ratios_at(step)
        counts = stage_counts(len(samples), ratios)
        order = list(range(len(samples)))
        rng.shuffle(order)  # which sample trains which stage: a seeded draw, reproducible on resume
        stages = list(range(plan.num_stages))
    else:
        ratios = [0.0] * last + [1.0]
        counts, order, stages = [len(samples)], list(range(len(samples))), [last]
    groups, captions, keys, metadata, epochs = [], [], [], [], []
    start = 0
    for stage, n in zip(stages, counts):
        group = [samples[i] for i in order[start : start + n]]
        start += n
        if group:
            x = torch.stack([s.image for s in group])
            if plan.joint and plan.pooled and stage != last:
                x = data_pyramid(x, plan.num_stages)[stage]
        elif samples and not plan.pooled:  # full-size groups: the samples' own shape (latents included)
            x = samples[0].image.new_empty(0, *samples[0].image.shape)
        else:
            x = torch.empty(0, 3, *plan.shape(stage, size))
        groups.append(x)
        captions.append([s.caption for s in group])
        keys.append([s.key for s in group])
        metadata.append([s.metadata for s in group])
        epochs.append([s.epoch for s in group])
    images = _one_storage(groups)
    text = _group_text(samples, order, counts) if samples and samples[0].text is not None else None
    return StageBatch(images, captions, keys, metadata, epochs, stages, step, list(ratios), plan.pooled,
                      state=state, text=text, latents=plan.latents, size=size)  # fmt: skip


def _group_text(samples: list[Sample], order: list[int], counts: list[int]) -> list[TextEmbedding]:
    """The stored text embeddings of precomputed samples, grouped as `make_batch` groups the samples (each
    field's groups share one buffer, as the images do)."""
    by_field = {}
    for name in (f.name for f in fields(TextEmbedding)):
        template = getattr(samples[0].text, name)
        groups, start = [], 0
        for n in counts:
            rows = [getattr(samples[i].text, name) for i in order[start : start + n]]
            start += n
            groups.append(torch.stack(rows) if rows else template.new_empty(0, *template.shape))
        by_field[name] = _one_storage(groups)
    return [TextEmbedding(**{name: views[i] for name, views in by_field.items()}) for i in range(len(counts))]


def _one_storage(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors` as views of one buffer: a worker hands a batch to the main process through one
    shared-memory segment instead of one per group (each segment costs about a millisecond)."""
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype)
    views, start = [], 0
    for t in tensors:
        views.append(flat[start : start + t.numel()].view(t.shape).copy_(t))
        start += t.numel()
    return views
