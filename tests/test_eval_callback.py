"""GenEval-Shapes during training (EvalCallback): eval/* scalars in TensorBoard, the best checkpoint kept, the
same images as `nami eval`, DDP ranks that agree; and the sample grid logged once per step with captions.

The training runs use `ScoredByStep`, whose evaluation samples are ground-truth renders for a known, step-
dependent set of prompts and blank images for the rest: the scores each step must log are then known (computed
here with `nami.eval.evaluate` on the images in prompt order), whatever a few training steps do to the weights.
Run as a module (`python -m tests.test_eval_callback key=value ...`) it trains with it: the DDP test's job.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from nami.config import ConfigError, load
from nami.eval import evaluate, prompt_set, to_rgb_uint8
from nami.eval.shapes import CATEGORIES, render
from nami.lit import JointFlowModule
from nami.lit.callbacks import EvalCallback, rank_share
from nami.sampling.images import CAPTION_WIDTH, TITLE_HEIGHT
from nami.flow import SampleTrace
from nami.sampling.pipeline import SampleResult

from .helpers import EXPERIMENTS, LEARNED_TEXT, REPO, tensorboard_scalars

# The module's tests share one trained run (and its resumption): one xdist worker.
pytestmark = pytest.mark.xdist_group("eval_callback")
TAGS = [f"eval/{name}" for name in (*CATEGORIES, "overall")]


def drawn_right(j: int, step: int) -> bool:
    """Whether prompt j's evaluation image is its ground-truth render at this step (else a blank image)."""
    return {2: j % 2 == 0, 4: True, 6: j % 3 == 0}.get(step, False)


def eval_image(spec: dict, right: bool) -> torch.Tensor:
    image = np.array(render(spec)) if right else np.full((spec["resolution"],) * 2 + (3,), 255, np.uint8)
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1


def expected_scores(cfg, step: int) -> dict[str, float]:
    specs = prompt_set(cfg.eval.train_per_category, cfg.eval.seed, cfg.resolution)
    report = evaluate([eval_image(s, drawn_right(j, step)) for j, s in enumerate(specs)], specs)
    return {f"eval/{name}": report[name] for name in (*CATEGORIES, "overall")}


class _Rendered:
    """The module's EMA pipeline, except that evaluation samples (no stages kept) are `eval_image`s."""

    def __init__(self, real, module: JointFlowModule):
        self.real, self.module = real, module

    def sample(self, prompts, steps=None, guidance=None, seed=0, mode=None, keep_stages=False, batch_size=None,
               height=None, width=None):  # fmt: skip
        if keep_stages:  # the sample grid
            return self.real.sample(prompts, steps, guidance, seed=seed, mode=mode, keep_stages=True)
        cfg = self.module.cfg
        specs = prompt_set(cfg.eval.train_per_category, cfg.eval.seed, cfg.resolution)
        images = []
        for prompt, s in zip(prompts, seed, strict=True):
            j = s - cfg.eval.seed  # prompt j samples with noise seed eval.seed + j, as `nami eval` does
            assert prompt == specs[j]["caption"], (prompt, j)
            images.append(eval_image(specs[j], drawn_right(j, self.module.global_step)))
        stacked = torch.stack(images)
        return SampleResult(stacked, SampleTrace(stacked))


class ScoredByStep(JointFlowModule):
    def pipeline(self, use_ema: bool = True):
        return _Rendered(super().pipeline(use_ema), self)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from data_modules.synth import write_shapes

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num=96, shards=2, resolution=32, seed=0)
    return root


def overrides(root, shapes, *extra) -> list[str]:
    return [
        *LEARNED_TEXT, f"data.shards={shapes}/*.tar", "data.batch_size=6", "data.num_workers=0",
        f"trainer.default_root_dir={root}", "trainer.accelerator=cpu", "bridge.kind=identity",
        "log.sample_prompts=[a red circle,two blue squares]", "sampler.steps=[1,1,1]", "optim.warmup_steps=2",
        "eval.every_n_steps=2", "eval.train_per_category=2", "eval.batch_size=5", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, shapes):
    """6 steps, evaluated at 2, 4 and 6 (scores 0.5-ish, 1.0-ish, 0.33-ish), a checkpoint and a grid every 2."""
    from nami.lit.runner import train

    root = tmp_path_factory.mktemp("scored")
    cfg = load(EXPERIMENTS / "tiny.yaml", overrides(root, shapes, "trainer.max_steps=6", "eval.keep_best=true",
               "trainer.checkpoint_every=2", "trainer.keep_checkpoints=5", "log.sample_every=2"))  # fmt: skip
    return cfg, train(cfg, ScoredByStep)


def test_eval_scalars_in_tensorboard_are_the_scores_of_the_sampled_images(scored_run):
    cfg, run = scored_run
    scalars = tensorboard_scalars(run / "tb")
    assert sorted(t for t in scalars if t.startswith("eval/")) == sorted(TAGS)  # no FID / CLIP without weights
    for step in (2, 4, 6):
        for tag, value in expected_scores(cfg, step).items():
            assert scalars[tag].keys() == {2, 4, 6}, (tag, scalars[tag])
            assert scalars[tag][step] == pytest.approx(value, abs=1e-6), (tag, step)
    assert len({scalars["eval/overall"][s] for s in (2, 4, 6)}) == 3  # the steps really scored differently


def test_keep_best_keeps_the_checkpoint_of_the_best_step(scored_run):
    cfg, run = scored_run
    folder = run / "checkpoints"
    overall = {s: expected_scores(cfg, s)["eval/overall"] for s in (2, 4, 6)}
    best_step = max(overall, key=overall.get)
    assert best_step == 4
    record = json.loads((folder / "best.json").read_text())
    assert record["step"] == best_step and record["overall"] == pytest.approx(overall[best_step])
    best = torch.load(folder / "best.ckpt", weights_only=True, map_location="cpu")
    same_step = torch.load(folder / "step00000004.ckpt", weights_only=True, map_location="cpu")
    last = torch.load(folder / "step00000006.ckpt", weights_only=True, map_location="cpu")
    assert best["global_step"] == 4 and "optimizer_states" not in best  # weights only
    assert best["state_dict"].keys() == same_step["state_dict"].keys()
    for name, tensor in best["state_dict"].items():
        assert torch.equal(tensor, same_step["state_dict"][name]), name
    assert any(not torch.equal(t, last["state_dict"][n]) for n, t in best["state_dict"].items())
    # the step checkpoints' retention and resume never take best.ckpt for a step checkpoint
    from nami.artifacts.weights import step_checkpoints

    assert [s for s, _ in step_checkpoints(folder)] == [2, 4, 6]


def test_a_resumed_run_keeps_a_better_best(scored_run, shapes):
    from nami.lit.runner import train

    cfg, run = scored_run
    folder = run / "checkpoints"
    before = (folder / "best.ckpt").read_bytes(), (folder / "best.json").read_text()
    resumed = load(EXPERIMENTS / "tiny.yaml", overrides(run.path.parent, shapes, "trainer.max_steps=8",
                   "eval.keep_best=true", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=5",
                   "log.sample_every=2", "trainer.resume=last"))  # fmt: skip
    train(resumed, ScoredByStep)
    assert tensorboard_scalars(run / "tb")["eval/overall"][8] == pytest.approx(0.0)  # evaluated, worse
    assert ((folder / "best.ckpt").read_bytes(), (folder / "best.json").read_text()) == before


def test_sample_grid_is_logged_once_per_step_with_its_prompts_written_beside_it(scored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, run = scored_run
    events = []
    for path in sorted((run / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"images": 0})
        acc.Reload()
        events += acc.Images("samples/stages") if "samples/stages" in acc.Tags()["images"] else []
    steps = sorted(e.step for e in events if e.step <= 6)  # (the resume test may add step 8)
    assert steps == [2, 4, 6]  # the end of training fell on a sampling step: still once
    image = np.asarray(Image.open(io.BytesIO(events[-1].encoded_image_string)).convert("L"))
    rows = len(cfg.log.sample_prompts)
    band = (image.shape[0] - TITLE_HEIGHT) // rows  # below the column titles, one band per prompt
    for r in range(rows):
        caption = image[TITLE_HEIGHT + r * band : TITLE_HEIGHT + (r + 1) * band, :CAPTION_WIDTH]
        assert (caption < 128).sum() > 20, f"no caption beside row {r}"
    assert (image[:TITLE_HEIGHT, CAPTION_WIDTH:] < 128).sum() > 20  # column titles


def test_demo_reads_and_plots_the_eval_curve(scored_run, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    _, run = scored_run
    curves = demo.eval_curves(run / "tb")
    scalars = tensorboard_scalars(run / "tb")
    assert curves == {tag: scalars[tag] for tag in TAGS}
    demo.plot_curves(curves, tmp_path / "curve.png", "tiny")
    assert Image.open(tmp_path / "curve.png").size == (700, 400)


@pytest.mark.parametrize("size", [None, (16, 64)])
def test_training_evaluation_samples_the_images_nami_eval_samples(tmp_path, size):
    """Same prompts, noise seeds, sampler and image size (eval.size: a named bucket, else the square) as
    `nami eval --num N` on the same (EMA) weights."""
    from nami.eval.report import sample_and_score
    from nami.parts import build_parts
    from nami.sampling import Pipeline

    at = [f"eval.size=[{size[0]},{size[1]}]"] if size else []
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "bridge.kind=identity", "sampler.steps=[2,1,1]",
                                           "eval.batch_size=4", "eval.train_per_category=1", *at])  # fmt: skip
    parts = build_parts(cfg, fitted=False)
    torch.nn.init.normal_(parts.model.final.linear.weight, std=0.05)  # a head that draws something
    module = JointFlowModule(cfg, parts)
    images = EvalCallback(cfg, every=1, per_category=1)._sample(_SingleProcess(), module)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, *(size or (32, 32)))
    ema = module.ema
    inference = Pipeline.from_config(parts, cfg, model=ema["model"], text_encoder=ema["text_encoder"])
    report, reference = sample_and_score(inference, cfg, per_category=1, progress=False)  # what `nami eval` runs
    assert (report["height"], report["width"]) == (size or (32, 32))
    assert torch.equal(images, torch.stack([torch.from_numpy(to_rgb_uint8(im)).permute(2, 0, 1) for im in reference]))
    assert images.float().std() > 10  # not a blank set


def test_sampling_leaves_every_submodule_in_its_own_mode(tiny_cfg):
    """Evaluating mid-training must not switch the frozen bridge (kept in eval) to training, nor the rest out."""
    from nami.lit.callbacks import sampling_mode
    from nami.parts import build_parts

    module = JointFlowModule(tiny_cfg, build_parts(tiny_cfg, fitted=False)).train()
    module.bridge.eval()
    before = {name: m.training for name, m in module.named_modules()}
    with sampling_mode(module):
        assert not any(m.training for m in module.modules())
    assert {name: m.training for name, m in module.named_modules()} == before
    assert not module.bridge.training and module.model.training


class _SingleProcess:
    world_size, global_rank, is_global_zero = 1, 0, True


@pytest.mark.parametrize("n", [1, 5, 6, 7, 12])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_rank_shares_are_equal_and_cover_every_prompt_once_in_order(n, world):
    shares = [rank_share(n, world, r) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # every rank runs the same batches (FSDP needs it)
    assert [j for s in shares for j in s][:n] == list(range(n))  # gathered in rank order: prompt order
    assert all(0 <= j < n for s in shares for j in s)


def test_keep_best_refuses_a_best_checkpoint_it_cannot_account_for(tmp_path, tiny_cfg):
    (tmp_path / "best.ckpt").write_bytes(b"someone's file")
    with pytest.raises(ConfigError, match=r"eval\.keep_best.*best\.ckpt exists without best\.json"):
        EvalCallback(tiny_cfg, every=2, per_category=1, best_dir=tmp_path)
    (tmp_path / "best.json").write_text(json.dumps({"step": 2, "overall": 0.5, "prompt_set": {"digest": "other"}}))
    with pytest.raises(ConfigError, match=r"eval\.keep_best.*another prompt set"):
        EvalCallback(tiny_cfg, every=2, per_category=1, best_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"eval\.keep_best: needs evaluations during training"):
        load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "eval.every_n_steps=0", "eval.keep_best=true"])


def test_tiny_evaluates_during_training_and_2b_does_not():
    tiny = load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT)
    assert 0 < tiny.eval.every_n_steps < tiny.trainer.max_steps and tiny.eval.train_per_category <= 10
    assert load(EXPERIMENTS / "nami_2b.yaml").eval.every_n_steps == 0


@pytest.mark.slow
def test_ddp_ranks_split_the_prompts_and_log_the_scores_of_all_of_them(tmp_path, shapes):
    """2 CPU ranks, 6 prompts in batches of 5 (so a rank's share spans batches): the gathered images are in
    prompt order (else the scores would differ from those computed here), and no rank waits for ever."""
    args = overrides(tmp_path, shapes, "trainer.max_steps=4", "trainer.devices=2", "trainer.strategy=ddp",
                     "eval.keep_best=true", "log.sample_every=0")  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "tests.test_eval_callback", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = load(EXPERIMENTS / "tiny.yaml", args)
    scalars = tensorboard_scalars(tmp_path / "tiny" / "tb")
    for step in (2, 4):
        for tag, value in expected_scores(cfg, step).items():
            assert scalars[tag][step] == pytest.approx(value, abs=1e-6), (tag, step)
    assert json.loads((tmp_path / "tiny" / "checkpoints" / "best.json").read_text())["step"] == 4


if __name__ == "__main__":  # the DDP test's job: Lightning starts this command again for rank 1
    from nami.lit.runner import train

    train(load(EXPERIMENTS / "tiny.yaml", sys.argv[1:]), ScoredByStep)
