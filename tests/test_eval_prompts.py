"""`eval.kind: prompts`: the evaluation during training samples a fixed prompt file with fixed seeds and logs its
image grid, CLIP score and FID against a reference folder to TensorBoard; its config keys are checked."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nami.config import ConfigError, load
from nami.sampling.prompts import image_seed

from .helpers import EXPERIMENTS, LEARNED_TEXT, tensorboard_scalars
from .prompt_fixtures import random_inception_state, save_tiny_clip

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a yellow circle"]


@pytest.mark.slow  # a short training run (about a minute on 2 cores)
@pytest.mark.filterwarnings("ignore:`max_length` is ignored")  # the tokenizer, on torchmetrics' padding
def test_prompt_evaluation_logs_clip_score_fid_and_an_image_grid(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from data_modules.synth import write_shapes
    from nami.lit.callbacks import EvalCallback
    from nami.lit.runner import train

    write_shapes(tmp_path / "shapes", num=24, shards=2, resolution=32, seed=0)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    clip = save_tiny_clip(tmp_path / "clip")
    torch.save(random_inception_state(), tmp_path / "inception.pth")
    reference = tmp_path / "reference"
    reference.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(reference / f"{i}.png")
    cfg = load(EXPERIMENTS / "tiny.yaml", [
        *LEARNED_TEXT, f"data.shards={tmp_path}/shapes/*.tar", "data.batch_size=6", "data.num_workers=0",
        f"trainer.default_root_dir={tmp_path}", "trainer.accelerator=cpu", "bridge.kind=identity",
        "sampler.steps=[1,1,1]", "log.sample_every=0", "trainer.max_steps=2", "eval.every_n_steps=2",
        "eval.kind=prompts", f"eval.prompts={tmp_path}/prompts.txt", f"eval.clip_path={clip}",
        f"eval.fid_weights={tmp_path}/inception.pth", f"eval.fid_reference={reference}", "eval.batch_size=2",
    ])  # fmt: skip
    callback = EvalCallback(cfg, every=2, per_category=1)  # what the runner builds: the file, fixed seeds
    assert callback.eval_set.prompts == PROMPTS
    assert callback.eval_set.seeds == [image_seed(cfg.eval.seed, i, 0) for i in range(3)]
    run = train(cfg)
    scalars = tensorboard_scalars(run / "tb")
    assert sorted(t for t in scalars if t.startswith("eval/")) == ["eval/clip_score", "eval/fid"]
    assert list(scalars["eval/clip_score"]) == [2] and 0.0 <= scalars["eval/clip_score"][2] <= 100.0
    assert math.isfinite(scalars["eval/fid"][2]) and scalars["eval/fid"][2] > 0
    events = []
    for path in (run / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path), size_guidance={"images": 0})
        acc.Reload()
        events += acc.Images("eval/images") if "eval/images" in acc.Tags()["images"] else []
    assert [e.step for e in events] == [2]
    grid = Image.open(io.BytesIO(events[0].encoded_image_string))
    assert grid.size == (2 + 3 * (96 + 2), 2 + 96 + 2)  # the three images side by side, enlarged to 96 px


@pytest.mark.parametrize("overrides, message", [
    (["eval.kind=other"], r"eval\.kind: unknown value 'other'"),
    (["eval.kind=prompts"], r"eval\.prompts: eval\.kind=prompts samples a prompt file"),
    (["eval.kind=prompts", "eval.prompts=geneval", "eval.every_n_steps=5", "eval.keep_best=true"],
     r"eval\.keep_best: ranks checkpoints by GenEval-Shapes"),
    (["eval.kind=prompts", "eval.prompts=geneval", "eval.fid_reference=/data/coco"],
     r"eval\.fid_reference: needs eval\.fid_weights"),
    (["eval.fid_reference=/data/coco", "eval.fid_weights=/w.pth"], r"eval\.fid_reference: is FID's reference set"),
])  # fmt: skip
def test_eval_kind_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, *overrides])
    assert load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT).eval.kind == "shapes"  # the tiny default


def test_a_missing_eval_prompt_file_stops_the_run_in_one_line(tmp_path):
    from nami.lit.callbacks import EvalCallback

    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "eval.kind=prompts", f"eval.prompts={tmp_path}/none.txt"])
    with pytest.raises(ConfigError, match=r"eval\.prompts: prompt file .*none\.txt does not exist"):
        EvalCallback(cfg, every=2, per_category=1)
