"""DDP (2 CPU processes, gloo, 2 workers per rank): one epoch over all ranks is the written set, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .hf_fixtures import source_set

FIXTURES = Path(__file__).with_name("data_fixtures.py")


# Unequal shard sizes, so ranks own different sample counts; 3 shards leave one shared by both ranks (where
# `datasets`' own split_dataset_by_node would make both ranks read all three). The jobs run side by side.
CASES = {"three": ("tar", [7, 10, 8]), "four": ("tar", [5, 9, 6, 8]), "hf_three": ("hf-parquet", [7, 10, 8])}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_epoch_covers_every_key_once(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(FIXTURES.parents[1]), os.environ.get("PYTHONPATH")])),
    }
    jobs, written = {}, {}
    for name, (source, sizes) in CASES.items():
        root = tmp_path / name
        (root / "out").mkdir(parents=True)
        spec, options, written[name] = source_set(root, source, sizes, prefix=name)
        # a rank owns at most 14 samples an epoch (4 batches of 4): 12 steps cross epoch 0 with room to spare
        cmd = [sys.executable, str(FIXTURES), "ddp", spec, str(root / "out"), "12", *options]
        log = open(root / "log.txt", "w")
        jobs[name] = (subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in jobs.items():
        try:
            code = proc.wait(timeout=360)  # no hang: both ranks must finish
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        log.close()
        assert code == 0, f"{name}: exit {code}\n" + (tmp_path / name / "log.txt").read_text()[-3000:]
    for name, keys in written.items():
        out = tmp_path / name / "out"
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        epoch0 = [key for seen in ranks for key, epoch, _, _ in seen if epoch == 0]
        assert sorted(epoch0) == sorted(keys), name  # union == written set, and no duplicate
        for seen in ranks:  # every worker of every rank went past its share of epoch 0
            assert {w for _, e, w, _ in seen if e >= 1} == {0, 1}, name
            assert sorted({s for *_, s in seen}) == list(range(12))  # both ranks stepped together
        state = torch.load(out / "epoch=0-step=12.ckpt", weights_only=True)["ShardDataModule"]
        assert len(state["ranks"]) == 2 and all(r["workers"] for r in state["ranks"])  # every rank's position
