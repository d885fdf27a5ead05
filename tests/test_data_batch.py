"""Stage batches: static group sizes by the ratios in force at each step, per-stage pyramid levels."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from data_modules import BatchPlan, ShardStream, StreamSpec, WorkerState, resolve_shards, stage_counts
from nami.flow import StageMix, data_pyramid

from .data_fixtures import data_cfg, flow_mix, simple_shards


@pytest.mark.parametrize(
    "size, ratios, counts",
    [
        (24, [1, 1, 1], [8, 8, 8]),
        (16, [1, 1, 1], [6, 5, 5]),
        (14, [4, 2, 1], [8, 4, 2]),
        (10, [1, 2, 4], [1, 3, 6]),
        (7, [0, 1, 0], [0, 7, 0]),
        (2, [1, 1, 1], [1, 1, 0]),
    ],
)
def test_stage_counts_largest_remainder(size, ratios, counts):
    assert stage_counts(size, ratios) == counts


def _stream(tmp_path, *overrides, sizes=(13, 11)):
    simple_shards(tmp_path, list(sizes))
    cfg = data_cfg(str(tmp_path / "*.tar"), "data.shuffle_buffer=0", *overrides)
    return cfg, StreamSpec.from_config(cfg, resolve_shards(cfg.data.shards), mix=flow_mix(cfg))


def test_ratio_schedule_follows_the_step_of_each_worker(tmp_path):
    cfg, spec = _stream(tmp_path, "data.batch_size=7")
    mix = StageMix((1.0, 1.0, 1.0), ((0, (4.0, 2.0, 1.0)), (3, (1.0, 2.0, 4.0))))
    spec = replace(spec, plan=replace(spec.plan, mix=mix))
    by_worker = [list(zip(range(4), ShardStream(spec).batches(w, 2, WorkerState()))) for w in range(2)]
    steps = {}
    for w, batches in enumerate(by_worker):
        for i, batch in batches:
            assert batch.step == i * 2 + w  # loader batch index: worker w's i-th batch of 2 workers
            steps[batch.step] = batch
    for step, batch in steps.items():
        expected = [4.0, 2.0, 1.0] if step < 3 else [1.0, 2.0, 4.0]
        assert batch.ratios == expected
        assert batch.counts == stage_counts(7, expected)  # static: the same every batch of a phase
        assert [tuple(x.shape) for x in batch.images] == [
            (n, 3, s, s) for n, s in zip(batch.counts, (8, 16, 32))
        ]
    accumulate = replace(spec, plan=replace(spec.plan, batches_per_step=2))
    # two loader batches a step: worker 0 of 2 makes loader batches 0, 2, 4, 6; a lone worker 0, 1, 2, 3
    assert [b.step for b in islice_batches(accumulate, 0, 4)] == [0, 1, 2, 3]
    assert [b.step for b in islice_batches(accumulate, 0, 4, workers=1)] == [0, 0, 1, 1]


def islice_batches(spec, worker, n, workers=2):
    out = []
    for batch in ShardStream(spec).batches(worker, workers, WorkerState()):
        out.append(batch)
        if len(out) == n:
            return out
    return out


def test_pixel_groups_are_levels_of_the_data_pyramid(tmp_path):
    cfg, spec = _stream(tmp_path, "data.batch_size=6", "flow.stage_ratios=[1,1,1]")
    full_spec = replace(spec, train=False, plan=replace(spec.plan, joint=False))
    joint_spec = replace(spec, train=False)  # centre crops so both streams see identical pixels
    full = next(ShardStream(full_spec).batches(0, 1, WorkerState()))
    joint = next(ShardStream(joint_spec).batches(0, 1, WorkerState()))
    assert full.stages == [2] and full.images[0].shape == (6, 3, 32, 32)
    assert joint.stages == [0, 1, 2] and joint.pooled and sorted(joint.all_keys()) == sorted(full.all_keys())
    by_key = dict(zip(full.keys[0], full.images[0]))
    for k, (keys, x) in enumerate(zip(joint.keys, joint.images)):
        assert len(keys) == 2
        expected = data_pyramid(torch.stack([by_key[key] for key in keys]), 3)[k]
        assert torch.equal(x, expected)


def test_online_autoencoder_gets_full_resolution_with_stage_ids(tmp_path):
    cfg, spec = _stream(tmp_path, "data.batch_size=6", "flow.stage_ratios=[1,1,1]")
    spec = replace(spec, plan=replace(spec.plan, pooled=False))
    batch = next(ShardStream(spec).batches(0, 1, WorkerState()))
    assert not batch.pooled and batch.stages == [0, 1, 2]
    assert [tuple(x.shape) for x in batch.images] == [(2, 3, 32, 32)] * 3


def test_batch_moves_to_device_and_keeps_metadata(tmp_path):
    cfg, spec = _stream(tmp_path, "data.batch_size=5")
    batch = next(ShardStream(spec).batches(0, 1, WorkerState()))
    moved = batch.to("cpu")
    assert moved.keys == batch.keys and all(torch.equal(a, b) for a, b in zip(moved.images, batch.images))
    assert len(batch) == 5 and batch.state["batches"] == 1 and batch.state["stream"] == "train"
    assert BatchPlan.from_config(cfg, flow_mix(cfg)).side(0) == cfg.stage_latent_sizes()[0]
    assert not batch.latents and batch.text is None  # pixels, captions only: the module encodes both


def test_full_resolution_training_batches_for_bridge_fitting(tmp_path):
    from data_modules import ShardDataModule

    simple_shards(tmp_path, [5, 4])
    cfg = data_cfg(str(tmp_path / "*.tar"), "data.batch_size=4", "data.num_workers=0")
    batch = next(iter(ShardDataModule(cfg, joint=False).train_dataloader()))
    assert batch.stages == [2] and batch.images[0].shape == (4, 3, 32, 32)
    assert batch.state["stream"] == "train"  # a training stream: its position is tracked for resume


def test_joint_batches_follow_the_mix_they_are_given(tmp_path):
    """The data side splits by the flow's StageMix object it receives, not by a copy rebuilt from cfg.flow."""
    from data_modules import ShardDataModule

    simple_shards(tmp_path, [5, 4])
    cfg = data_cfg(str(tmp_path / "*.tar"), "data.batch_size=4", "data.num_workers=0", "flow.stage_ratios=[1,1,1]")
    batch = next(iter(ShardDataModule(cfg, mix=StageMix((0.0, 1.0, 0.0))).train_dataloader()))
    assert batch.ratios == [0.0, 1.0, 0.0] and batch.counts == [0, 4, 0]
    with pytest.raises(ValueError, match="parts.flow.mix"):
        ShardDataModule(cfg).train_dataloader()  # joint batches without the flow's mix
