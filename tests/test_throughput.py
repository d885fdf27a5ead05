"""Issue 15's CPU-side parts: FLOP rates beside the card's peak, no host reads inside the sampling loop, the
`sampler.compile` switch's CPU fallback, and flushing denormal floats."""

from __future__ import annotations

import warnings

import pytest
import torch

from nami.config import load
from nami.sampling.pipeline import Pipeline, SamplerSettings
from nami.sampling.precision import flush_denormals
from nami.models import forward_cost
from nami.parts import build_parts
from nami.perf.throughput import StageTimer, peak_tflops, rate

from .helpers import EXPERIMENTS, LEARNED_TEXT

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def setup():
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "bridge.detail_noise=false"])
    torch.manual_seed(0)
    parts = build_parts(cfg, fitted=False)
    with torch.no_grad():  # move the zero-initialised head off zero, so samples depend on the network
        for p in parts.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return cfg, parts


def _pipeline(setup, **options) -> Pipeline:
    cfg, parts = setup
    return Pipeline.from_config(parts, cfg, **options)


def test_peak_table_matches_device_names_most_specific_first():
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("cpu") is None
    assert rate(989e12, 2.0, "NVIDIA H200") == {"tflops": pytest.approx(494.5), "peak_fraction": pytest.approx(0.5)}
    assert rate(1e12, 1.0, "cpu")["peak_fraction"] is None


@pytest.mark.parametrize("mode", ["progressive", "no_nesting", "uniform"])
def test_stage_timer_counts_the_flop_model_per_forward(setup, mode):
    cfg, _ = setup
    pipe = _pipeline(setup)
    steps = [6] if mode == "uniform" else [2, 3, 1]
    with StageTimer(cfg, pipe.model, nested=mode == "progressive") as timer:
        pipe.sample(PROMPTS, steps, 3.0, seed=[1, 2], mode=mode)
    report = timer.report("cpu")
    stages = [cfg.num_stages - 1] if mode == "uniform" else list(range(cfg.num_stages))
    assert [r["stage"] for r in report] == stages
    for r, n in zip(report, steps):
        rows = 2 * len(PROMPTS)  # guidance: one forward over [cond; uncond]
        want = n * rows * forward_cost(cfg, r["stage"], nested=mode == "progressive").total
        assert r["calls"] == n and r["tflop"] * 1e12 == pytest.approx(want)
        assert r["seconds"] > 0 and r["tflops"] > 0
    # the hooks are gone afterwards
    assert not pipe.model._forward_hooks and not pipe.model._forward_pre_hooks


def test_sampling_loop_never_reads_a_tensor_on_the_host(setup, monkeypatch):
    """On a GPU each such read (.item(), .tolist(), bool(t), float(t)) waits for every queued kernel; the
    Euler loop keeps its sigmas on the host and the mask check happens once, before the loop."""
    pipe = _pipeline(setup)
    text = pipe.encode_prompts(PROMPTS, 3.0)
    reads = []

    def forbid(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if self.dtype != torch.float64:  # the timestep grids are host-side float64 math, not device reads
                reads.append(name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    generators = pipe.generators([1, 2])
    text = text.for_attention()  # what denoise does once before the loop
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        forbid(name)
    pipe.flow.sample(lambda z, t, k, c: pipe.model(z, t, c.states, c.mask, c.pooled, stage=k),
                     pipe.initial_noise(generators, pipe.flow.num_stages), text, [2, 2, 2], 3.0, generators)  # fmt: skip
    assert reads == []


def test_compile_switch_samples_eagerly_on_the_cpu_with_one_warning(setup):
    eager = _pipeline(setup).sample(PROMPTS, [2, 2, 2], 3.0, seed=[1, 2]).images
    pipe = _pipeline(setup, compile=True)
    with pytest.warns(UserWarning, match="sampler.compile"):
        compiled = pipe.sample(PROMPTS, [2, 2, 2], 3.0, seed=[1, 2]).images
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per pipeline
        pipe.sample(PROMPTS, [2, 2, 2], 3.0, seed=[1, 2])
    assert torch.equal(eager, compiled)


def test_sampling_options_take_compile_from_the_config():
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "sampler.compile=true"])
    assert SamplerSettings.from_config(cfg).compile is True


def test_flushing_denormals_zeroes_them_and_leaves_samples_within_float_tolerance(setup):
    try:
        torch.set_flush_denormal(False)  # (a `nami` command run in this process earlier may have turned it on)
        tiny = torch.tensor([1e-39])  # below float32's smallest normal (1.18e-38); made with flushing off
        kept = _pipeline(setup).sample(PROMPTS, [2, 2, 2], 3.0, seed=[1, 2]).images
        assert (tiny * 1.0).item() != 0.0
        assert flush_denormals() is True  # x86 (the kit's CPUs) has the mode
        assert (tiny * 1.0).item() == 0.0
        flushed = _pipeline(setup).sample(PROMPTS, [2, 2, 2], 3.0, seed=[1, 2]).images
    finally:
        torch.set_flush_denormal(False)
    torch.testing.assert_close(flushed, kept, atol=1e-5, rtol=0)
