"""Mid-epoch resume: the continuation after restoring the saved state is the uninterrupted one."""

from __future__ import annotations

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_modules import ShardDataModule

from .data_fixtures import data_cfg, flow_mix, good, rgb_png, simple_shards, write_tar
from .hf_fixtures import HF_OPTIONS, write_hf


def _shards(root, source="files"):
    """24 samples, one bad among them, in 5 shards: tars + parquet, or one hf (parquet-folder) dataset.
    Returns (data.shards, the overrides that read it, the good keys)."""
    if source == "hf":
        shards = [
            [
                {"key": f"s{s}_{i:04d}", "caption": f"c {s} {i}", "image": rgb_png(s * 1000 + i)}
                for i in range(n)
            ]
            for s, n in enumerate([7, 4, 6])
        ]
        shards.append([{"key": "b_0", "caption": "x", "image": rgb_png(1)}, {"key": "b_bad", "caption": "x", "image": b""},
                       {"key": "b_1", "caption": "x", "image": rgb_png(2)}])  # fmt: skip
        shards.append([{"key": f"pq_{i}", "caption": f"row {i}", "image": rgb_png(40 + i)} for i in range(5)])
        path = write_hf(root / "hf", "parquet", shards)
        return str(path), HF_OPTIONS, [r["key"] for shard in shards for r in shard if r["key"] != "b_bad"]
    keys = simple_shards(root, [7, 4, 6])
    # a bad sample in the middle: skipped the same way in both runs, and counted once
    write_tar(
        root / "s003.tar", [good("b_0", 1), {"__key__": "b_bad", "png": b"", "txt": b"x"}, good("b_1", 2)]
    )
    rows = [{"key": f"pq_{i}", "caption": f"row {i}", "image": rgb_png(40 + i)} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), root / "s004.parquet", row_group_size=2)  # resume skips groups
    return str(root / "s*"), [], keys + ["b_0", "b_1"] + [r["key"] for r in rows]


def _keys(batches):
    return [[(k, e) for keys, epochs in zip(b.keys, b.epochs) for k, e in zip(keys, epochs)] for b in batches]


def _take(dm, n, prefetch=0):
    """Consume n batches the way Lightning does: fetch `prefetch` more than it trains on."""
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(n + prefetch)]
    for b in batches[:n]:
        dm.on_before_batch_transfer(b, 0)
    del it
    return batches[:n]


@pytest.mark.parametrize("source", ["files", "hf"])
@pytest.mark.parametrize("shuffle", [0, 3])
def test_resume_continues_the_uninterrupted_sequence(tmp_path, shuffle, source):
    spec, options, keys = _shards(tmp_path, source)
    cfg = data_cfg(
        spec, "data.batch_size=4", "data.num_workers=2", f"data.shuffle_buffer={shuffle}", *options
    )
    total, stop = 18, 7  # 18 batches of 4 = 72 samples: over three epochs of 24
    mix = flow_mix(cfg)
    uninterrupted = ShardDataModule(cfg, mix=mix)
    full = _keys(_take(uninterrupted, total))
    first = ShardDataModule(cfg, mix=mix)
    head = _keys(_take(first, stop, prefetch=2))
    state = first.state_dict()
    second = ShardDataModule(cfg, mix=mix)
    second.load_state_dict(state)
    tail = _keys(_take(second, total - stop))
    assert head + tail == full  # nothing lost, nothing repeated, same order (also with shuffling)
    assert _keys(_take(first, total - stop)) == tail  # a loader made again goes on from the consumed batch
    seen = [k for batch in full for k in batch]
    for epoch in (0, 1):  # every epoch is the written set exactly once
        assert sorted(k for k, e in seen if e == epoch) == sorted(keys)
    if shuffle:
        assert [k for k, e in seen if e == 0] != [k for k, e in seen if e == 1]  # reshuffled per epoch
    # skip counters travel with the position: the same as after the uninterrupted run (one per epoch read)
    assert second.skip_counts() == uninterrupted.skip_counts() and second.skip_counts()["empty_image"] >= 2
    assert second.skip_counts()["undecodable"] == 0  # every reason is reported, zeros included


def test_changed_worker_count_restarts_with_a_warning(tmp_path):
    _shards(tmp_path)
    cfg = data_cfg(str(tmp_path / "s*"), "data.batch_size=4", "data.num_workers=2")
    dm = ShardDataModule(cfg, mix=flow_mix(cfg))
    _take(dm, 3)
    fewer = data_cfg(str(tmp_path / "s*"), "data.batch_size=4", "data.num_workers=1")
    other = ShardDataModule(fewer, mix=flow_mix(fewer))
    other.load_state_dict(dm.state_dict())
    with pytest.warns(UserWarning, match="data position not restored"):
        other.train_dataloader()


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.all_keys())
        return sum((self.w * x.mean() - 1) ** 2 for x in batch.images if len(x))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(cfg, root, max_steps, ckpt=None, every=None):
    module = _Recorder()
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1)]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks if every else None,
        enable_checkpointing=bool(every),
    )
    trainer.fit(module, datamodule=ShardDataModule(cfg, mix=flow_mix(cfg)), ckpt_path=ckpt)
    return module.seen


@pytest.mark.timeout(180)
@pytest.mark.parametrize("source", ["files", "hf"])
def test_lightning_checkpoint_restores_the_loader_position(tmp_path, source):
    """Through a real Trainer: Lightning prefetches a batch before it saves; the resumed run keeps it."""
    (tmp_path / "data").mkdir()
    spec, options, _ = _shards(tmp_path / "data", source)
    cfg = data_cfg(spec, "data.batch_size=3", "data.num_workers=2", "data.shuffle_buffer=4", *options)
    full = _fit(cfg, tmp_path / "a", 9)
    head = _fit(cfg, tmp_path / "b", 4, every=4)
    ckpt = tmp_path / "b" / "epoch=0-step=4.ckpt"
    assert ckpt.is_file()
    stored = torch.load(ckpt, weights_only=True)["ShardDataModule"]
    assert stored["ranks"][0]["workers"]  # the position lives in the Lightning checkpoint
    tail = _fit(cfg, tmp_path / "b", 9, ckpt=str(ckpt))
    assert head + tail == full
