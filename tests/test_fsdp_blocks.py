"""FSDP2 and the nested MM-DiT: a stage that ends on a double-stream block gets the same gradients sharded as
unsharded, and no block hands FSDP an output that aliases its input (FSDP2 then returns a view whose in-place
use would skip the block's all-gather; it warned about FSDPDoubleStreamBlock before the block stopped
returning its untouched text stream)."""

from __future__ import annotations

import json
import subprocess
import sys

from .helpers import REPO


def test_sharded_gradients_equal_unsharded_and_no_view_outputs():
    result = subprocess.run([sys.executable, str(REPO / "tests" / "fsdp_grads_job.py")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["view_warnings"] == 0
    assert report["stages"]["0"]["depth"] == 2  # tiny's stage 0 runs the two double blocks only
    for stage in report["stages"].values():
        assert stage["same_names"] and stage["grad_norm"] > 0
        assert stage["max_abs_diff"] <= 1e-6 * max(1.0, stage["grad_norm"])
