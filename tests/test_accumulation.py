"""Gradient accumulation (trainer.accumulate_grad_batches): N micro-batches make one step of an N-times-larger
batch, each micro-batch draws its own noise, and a real run steps once per N micro-batches."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.loops.optimization.automatic import ClosureResult

from nami.config import load
from nami.flow import data_pyramid
from nami.flow.seeds import step_generator
from nami.lit.joint_flow import JointFlowModule
from nami.lit.runner import train
from nami.models import model_fn
from nami.parts import build_parts

from .helpers import EXPERIMENTS, LEARNED_TEXT, tensorboard_scalars

# micro-batches of 5 samples whose stage groups differ in size from one micro-batch to the next
GROUP_SIZES = [[1, 3, 1], [2, 1, 2], [1, 1, 3]]
CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles", "a cyan square"]


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _micro_batch(cfg, sizes: list[int], seed: int):
    from data_modules.collate import StageBatch

    g = torch.Generator().manual_seed(seed)
    k = cfg.num_stages
    images = [data_pyramid(torch.rand(n, 3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1, k)[s].contiguous()
              for s, n in enumerate(sizes)]  # fmt: skip
    captions = [[CAPTIONS[(seed + i) % len(CAPTIONS)] for i in range(n)] for n in sizes]
    keys = [[f"{seed}-{s}-{i}" for i in range(n)] for s, n in enumerate(sizes)]
    return StageBatch(images, captions, keys, [[{}] * n for n in sizes], [[0] * n for n in sizes], list(range(k)), 0,
                      [1.0] * k, True)  # fmt: skip


def _module(cfg) -> JointFlowModule:
    torch.manual_seed(0)
    module = JointFlowModule(cfg, build_parts(cfg, fitted=False))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the initial weights: the zero-initialised head would pass no gradient back
        for _, p in sorted(module.named_parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


class _Recorder:
    """Replaces the flow's `training_sample`: draws as it does (noise, then sigma') and keeps the draws, or hands
    back recorded draws stage by stage (`replay`)."""

    def __init__(self, flow):
        self.flow, self.original = flow, flow.training_sample
        self.draws: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (k, x, noise, sigma')
        self.queue: dict[int, list] = {}

    def record(self, x_k, k, generator=None, noise=None, sigma_local=None):
        noise = torch.randn(x_k.shape, generator=generator, device=x_k.device, dtype=x_k.dtype)
        sigma_local = self.flow.density(x_k.shape[0], generator, x_k.device)
        self.draws.append((k, x_k, noise, sigma_local))
        return self.original(x_k, k, noise=noise, sigma_local=sigma_local)

    def replay(self, x_k, k, generator=None, noise=None, sigma_local=None):
        noise, sigma_local = self.queue[k].pop(0)
        return self.original(x_k, k, noise=noise, sigma_local=sigma_local)


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.trained_parameters()}


def test_micro_batches_accumulate_the_gradient_of_the_big_batch(float64):
    """Three micro-batches of 5 (stage groups of unequal sizes, caption dropout on), each loss scaled as Lightning
    scales it, give the gradient of one batch of 15 made of the same samples with the same noise, sigma' and
    dropped captions: the loss of the big batch is the mean over all its samples."""
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "bridge.detail_noise=true", "flow.caption_dropout=0.4"])
    module = _module(cfg)
    n = len(GROUP_SIZES)
    recorder = _Recorder(module.flow)
    kept: list[list[str]] = []
    drop = module.flow.drop_captions
    module.flow.drop_captions = lambda captions, generator: kept.append(drop(captions, generator)) or kept[-1]
    module.flow.training_sample = recorder.record

    batches = [_micro_batch(cfg, sizes, seed=10 + j) for j, sizes in enumerate(GROUP_SIZES)]
    for j, batch in enumerate(batches):
        loss = module.stage_losses(batch, micro=j).total
        ClosureResult.from_training_step_output(loss, n).closure_loss.backward()  # Lightning's 1/N
    accumulated = _grads(module)
    assert any("" in group for group in kept) and any(c for group in kept for c in group)  # dropout happened

    # the big batch: group k holds every micro-batch's stage-k samples, in micro-batch order
    stages = range(cfg.num_stages)
    draws = {k: [d for d in recorder.draws if d[0] == k] for k in stages}
    module.flow.training_sample = recorder.replay

    def big_batch():
        module.zero_grad(set_to_none=True)
        recorder.queue = {k: [(torch.cat([d[2] for d in draws[k]]), torch.cat([d[3] for d in draws[k]]))]
                          for k in stages}  # fmt: skip
        latents = [(k, torch.cat([d[1] for d in draws[k]])) for k in stages]
        texts = [module.text_encoder([c for j in range(n) for c in kept[j * len(stages) + k]]).for_attention()
                 for k in stages]  # fmt: skip
        return module.flow.training_losses(model_fn(module.model), latents, texts)

    big = big_batch()
    assert big.counts == [sum(s[k] for s in GROUP_SIZES) for k in stages]
    big.total.backward()
    whole = _grads(module)
    assert accumulated.keys() == whole.keys() and len(whole) > 20
    worst = max((accumulated[name] - whole[name]).abs().max().item() for name in whole)
    assert worst <= 1e-10, worst
    assert max(g.abs().max().item() for g in whole.values()) > 1e-3  # gradients that say something

    # the same comparison fails for a loss that weighs the stage groups equally (their sizes differ)
    unweighted = big_batch()
    (sum(unweighted.losses) / len(unweighted.losses)).backward()
    assert max((accumulated[name] - p.grad).abs().max().item() for name, p in module.trained_parameters()) > 1e-6


def test_each_micro_batch_draws_its_own_noise_and_the_first_draws_as_before():
    old = (0 * 0x9E3779B1 + 1 * 0x85EBCA77 + 7 * 0xC2B2AE3D) % (2**63 - 1)  # the formula before accumulation
    assert torch.equal(torch.randn(4, generator=step_generator(0, 1, 7)),
                       torch.randn(4, generator=torch.Generator().manual_seed(old)))  # fmt: skip
    draws = [torch.randn(8, generator=step_generator(0, 1, 7, micro=m)) for m in range(4)]
    assert torch.equal(draws[0], torch.randn(8, generator=step_generator(0, 1, 7)))
    assert all(not torch.equal(draws[a], draws[b]) for a in range(4) for b in range(a + 1, 4))
    assert not torch.equal(draws[1], torch.randn(8, generator=step_generator(0, 1, 8)))  # not the next step's


def test_a_run_steps_once_per_n_micro_batches(tmp_path):
    """accumulate_grad_batches=3: 9 micro-batches for 3 optimizer steps, each built for its step's stage mix, one
    logged loss per step (the mean over the step's micro-batches), EMA and optimizer stepped 3 times."""
    from data_modules.synth import write_shapes

    write_shapes(tmp_path / "shapes", num=60, shards=2, resolution=32)
    cfg = load(EXPERIMENTS / "tiny.yaml", [
        *LEARNED_TEXT, f"data.shards={tmp_path}/shapes/*.tar", "data.batch_size=6", "data.num_workers=1",
        f"trainer.default_root_dir={tmp_path}", "trainer.accelerator=cpu", "trainer.max_steps=3",
        "trainer.accumulate_grad_batches=3", "trainer.checkpoint_every=2", "trainer.log_every_n_steps=1",
        "bridge.kind=identity", "log.sample_prompts=[a red circle]", "sampler.steps=[1,1,1]", "optim.warmup_steps=2",
        "log.record_keys=true",
    ])  # fmt: skip
    run = train(cfg)
    records = [json.loads(line) for line in (run / "keys-rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    keys = [k for r in records for k in r["keys"]]
    assert len(keys) == 54 and len(set(keys)) == 54  # 60 samples: no micro-batch repeats another's samples
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step00000002.ckpt", "step00000003.ckpt"]
    state = torch.load(run / "checkpoints" / "step00000003.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 3
    adam = state["optimizer_states"][0]["state"]
    assert {float(s["step"]) for s in adam.values()} == {3.0}
    scalars = tensorboard_scalars(run / "tb")
    assert sorted(scalars["train/loss"]) == [0, 1, 2] and sorted(scalars["train/grad_norm"]) == [0, 1, 2]
