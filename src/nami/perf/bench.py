"""`nami bench sampling|training`: measured times and ratios, each beside the FLOP model's prediction.

Every variant runs in the same process on the same weights and the same batch, interleaved over repeats
(median taken), so machine noise hits all of them alike. Sampling times cover the denoising loop and the
bridges (what the FLOP model predicts); text encoding and decoding are timed separately.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Callable

import torch

from ..config import NamiConfig
from ..flow import up
from ..models import forward_cost, predicted_ratio
from ..parts import build_parts
from ..sampling import Pipeline
from ..sampling.precision import autocast_dtype, sampling_device, uses_cuda
from .throughput import StageTimer, format_rate, peak_tflops, rate


def _synchronize() -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the kernels it launched."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _median_times(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time per variant: one warm-up each, then `repeats` interleaved rounds."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            _synchronize()
            start = time.perf_counter()
            fn()
            _synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def bench_sampling(cfg: NamiConfig, pipe: Pipeline | None = None, batch: int = 8, repeats: int = 3,
                   height: int | None = None, width: int | None = None) -> dict:  # fmt: skip
    """Uniform (all blocks, full resolution), progressive and progressive-without-nesting sampling of height x width
    pixel images (default the square resolution; an aspect-ratio bucket), each ratio beside the FLOP model's at
    that size.

    Runs on the GPU when there is one and `trainer.accelerator` allows it, else on the CPU.
    """
    if pipe is None:  # random weights: the time does not depend on them
        parts = build_parts(cfg, fitted=False)
        for module in (parts.model, parts.text_encoder, parts.bridge):
            module.eval().requires_grad_(False)
        pipe = Pipeline.from_config(parts, cfg).to(sampling_device(cfg.trainer.accelerator))
    s = pipe.settings
    height, width = height or cfg.resolution, width or cfg.resolution
    pipe.latent_shape(height, width)  # a size off the stage grid is one line before anything runs
    size = (height, width)
    prompts = [cfg.log.sample_prompts[i % len(cfg.log.sample_prompts)] for i in range(batch)]
    start = time.perf_counter()
    text = pipe.encode_prompts(prompts)
    encode_s = time.perf_counter() - start

    def run(mode: str):
        return pipe.denoise(text, pipe.generators(list(range(batch))), mode=mode, height=height, width=width).final

    times = _median_times({m: (lambda m=m: run(m)) for m in ("uniform", "progressive", "no_nesting")}, repeats)
    transitions = _transition_times(cfg, pipe, batch, repeats, pipe.latent_shape(height, width))
    final = run("progressive")
    start = time.perf_counter()
    pipe.decode(final)
    decode_s = time.perf_counter() - start
    device = torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else "cpu"
    report = {"device": device, "batch": batch, "height": height, "width": width, "steps": list(s.steps),
              "uniform_steps": s.uniform_steps,
              "guidance": s.guidance, "peak_tflops": peak_tflops(device),
              "uniform_s": times["uniform"], "text_encode_s": encode_s, "decode_s": decode_s}  # fmt: skip
    # FLOPs and per-stage times from one more run of each mode, timed per forward (StageTimer)
    stages = {}
    for mode in ("uniform", "progressive", "no_nesting"):
        with StageTimer(cfg, pipe.model, nested=mode == "progressive", size=size) as timer:
            run(mode)
        stages[mode] = timer.report(device)
    for mode in ("uniform", "progressive", "no_nesting"):
        flops = sum(stage["tflop"] for stage in stages[mode]) * 1e12
        report[mode] = {} if mode == "uniform" else {
            "seconds": times[mode],
            "measured_ratio": times[mode] / times["uniform"],
            "predicted_ratio": predicted_ratio(cfg, nesting=mode == "progressive", size=size),
        }  # fmt: skip
        report[mode].update(rate(flops, times[mode], device), stages=stages[mode])
    report.update(transitions)
    report["bridge_share_of_progressive"] = transitions["bridge_transition_s"] / times["progressive"]
    return report


def _transition_times(cfg: NamiConfig, pipe: Pipeline, batch: int, repeats: int,
                      shape: tuple[int, int] | None = None) -> dict:  # fmt: skip
    """Time of all K-1 transitions with the configured bridge and with renoise, on the same tensors (full-size
    latents of `shape`, default the square's)."""

    flow, bridge = pipe.flow, pipe.flow.bridge
    if flow.num_stages < 2:  # one stage (the uniform baseline): no transitions to time
        return {"bridge_kind": cfg.bridge.kind, "bridge_transition_s": 0.0, "renoise_transition_s": 0.0}
    renoise = bridge.with_kind("renoise").to(pipe.device)
    ends = [pipe.initial_noise(pipe.generators(list(range(batch))), flow.num_stages, shape)]
    for _ in range(flow.num_stages - 2):
        ends.append(up(ends[-1]))
    generator = torch.Generator().manual_seed(0)

    def transitions(flow):
        return [flow.transition(z, k + 1, generator) for k, z in enumerate(ends)]

    with_renoise = replace(flow, bridge=renoise)
    times = _median_times({"bridge": lambda: transitions(flow), "renoise": lambda: transitions(with_renoise)},
                          max(repeats, 5))  # fmt: skip
    return {"bridge_kind": cfg.bridge.kind, "bridge_transition_s": times["bridge"],
            "renoise_transition_s": times["renoise"]}  # fmt: skip


def synthetic_batch(cfg: NamiConfig, mix, joint: bool = True, encoders: tuple | None = None,
                    random_latents: bool = False, seed: int = 0):  # fmt: skip
    """A data-module batch built by the real collate (joint batches split by `mix`, the flow's stage mix): random
    images and the configured captions. With `encoders` (text encoder, autoencoder) it is the batch precomputed
    shards give for the same samples: full-size latents and stored text embeddings (what `nami data encode`
    writes). With `random_latents`, random full-size latents and text embeddings of the configured shapes: the
    precomputed batch of a model whose encoders are not built (the 2B step on one GPU)."""
    import random

    from data_modules.collate import BatchPlan, make_batch
    from data_modules.records import Sample

    from ..text_embedding import TextEmbedding

    g = torch.Generator().manual_seed(seed)
    prompts, t, side = cfg.log.sample_prompts, cfg.text_encoder, cfg.latent_size
    samples = []
    for i in range(cfg.data.batch_size):
        if random_latents:
            text = TextEmbedding(torch.randn(t.max_length, t.dim, generator=g), torch.ones(t.max_length, dtype=torch.bool),
                                 torch.randn(t.pooled_dim, generator=g))  # fmt: skip
            image = torch.randn(cfg.autoencoder.channels, side, side, generator=g)
        else:
            text, image = None, torch.rand(3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1
        samples.append(Sample(f"{i:09d}", image, prompts[i % len(prompts)], {}, text=text))
    latents = random_latents or encoders is not None  # stored latents are full size (the module pools them)
    plan = BatchPlan.from_config(cfg, mix, joint=joint, latents=latents)
    if encoders is not None and not random_latents:
        text_encoder, autoencoder = encoders
        with torch.no_grad():
            encoded = autoencoder.encode(torch.stack([s.image for s in samples])).cpu()
            text = text_encoder([s.caption for s in samples]).to("cpu")
        samples = [replace(s, image=encoded[i], text=text.row(i)) for i, s in enumerate(samples)]
    return make_batch(samples, plan, 0, random.Random(seed), {})


def bench_training(cfg: NamiConfig, repeats: int = 3, compare_data: bool = False) -> dict:
    """One optimizer step on a joint multi-resolution batch against one on a full-resolution-only batch, both on
    the configured data path (data.precomputed: stored latents and text states; else encoded in the step). With
    `compare_data` the joint step also runs on the other path, in the same run, for the precomputed/online ratio
    (not with a text encoder that trains with the model: nothing to precompute). Runs on the GPU when there is
    one and trainer.accelerator allows it."""
    from ..lit.joint_flow import JointFlowModule  # the real training step is a LightningModule's

    parts = build_parts(cfg, fitted=False)  # with the encoders: the online step and the stored inputs need them
    module = JointFlowModule(cfg, parts)
    precomputable = not parts.text_encoder.trainable
    encoders = (parts.text_encoder, parts.autoencoder)
    joint = "precomputed" if cfg.data.precomputed else "online"
    other = {"online": "precomputed", "precomputed": "online"}[joint]
    paths = [joint] + ([other] if compare_data and precomputable else [])
    mix = parts.flow.mix
    batches = {path: synthetic_batch(cfg, mix, True, encoders if path == "precomputed" else None) for path in paths}
    batches["full_resolution"] = synthetic_batch(cfg, mix, False, encoders if cfg.data.precomputed else None)
    device = torch.device("cuda" if uses_cuda(cfg.trainer.accelerator) else "cpu")
    module = module.to(device)
    batches = {name: b.to(device) for name, b in batches.items()}
    if precomputable:
        with torch.no_grad():
            module.unconditional = module.text_encoder([""])  # what caption dropout swaps in for stored text
    optimizer = torch.optim.AdamW(module.trainable().parameters(), lr=1e-4)
    dtype = autocast_dtype(cfg.trainer.precision, cfg.trainer.accelerator)

    def step(batch):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = module.stage_losses(batch).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = _median_times({name: (lambda b=b: step(b)) for name, b in batches.items()}, repeats)
    predicted = {
        name: sum(len(keys) * forward_cost(cfg, k).total for keys, k in zip(batches[name].keys, batches[name].stages))
        for name in (joint, "full_resolution")
    }  # fmt: skip
    batch = cfg.data.batch_size
    both = len(paths) == 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # model FLOPs of a step: forward plus backward, 3x the forward (as the module's flops_per_batch counts them)
    rates = {key: rate(3 * predicted[path], times[path], name) for key, path in (("joint", joint),
                                                                                ("full_resolution", "full_resolution"))}  # fmt: skip
    return {
        "device": name,
        "peak_tflops": peak_tflops(name),
        "joint_rate": rates["joint"],
        "full_resolution_rate": rates["full_resolution"],
        "batch": batch,
        "data": joint,
        "stage_counts": [len(keys) for keys in batches[joint].keys],
        "joint_step_s": times[joint],
        "full_resolution_step_s": times["full_resolution"],
        "measured_ratio": times[joint] / times["full_resolution"],
        "predicted_ratio": predicted[joint] / predicted["full_resolution"],
        "online_step_s": times.get("online"),
        "precomputed_step_s": times.get("precomputed"),
        # < 1: training from precomputed shards is faster by this factor (the encoders' share of a step)
        "precomputed_ratio": times["precomputed"] / times["online"] if both else None,
        "samples_per_s": {path: batch / times[path] for path in paths},
    }


def format_sampling(r: dict) -> str:
    """Human-readable bench_sampling report."""
    p, n = r["progressive"], r["no_nesting"]
    return "\n".join([
        f"sampling {r['height']} x {r['width']} px on {r['device']}, batch {r['batch']}, guidance {r['guidance']}: "
        f"uniform {r['uniform_steps']} steps {r['uniform_s']:.3f}s",
        f"  progressive {'/'.join(map(str, r['steps']))}: {p['seconds']:.3f}s  ratio {p['measured_ratio']:.3f}"
        f" (predicted {p['predicted_ratio']:.3f})",
        f"  without nesting:   {n['seconds']:.3f}s  ratio {n['measured_ratio']:.3f} (predicted {n['predicted_ratio']:.3f})",
        f"  transitions: {r['bridge_kind']} {r['bridge_transition_s'] * 1e3:.2f} ms"
        f" ({100 * r['bridge_share_of_progressive']:.2f}% of progressive), renoise {r['renoise_transition_s'] * 1e3:.2f} ms",
        f"  outside the loop: text encoding {r['text_encode_s']:.3f}s, decoding {r['decode_s']:.3f}s",
        *_rate_lines(r),
    ])  # fmt: skip


def _rate_lines(r: dict) -> list[str]:
    """Achieved model TFLOP/s per mode (whole loop) and per stage (its forwards only)."""
    lines = [f"  model FLOP rate ({'bf16 peak %g TFLOP/s' % r['peak_tflops'] if r['peak_tflops'] else 'no known peak'}):"]
    for mode in ("uniform", "progressive", "no_nesting"):
        stages = "; ".join(f"stage {s['stage']} {format_rate(s)}" for s in r[mode]["stages"])
        lines.append(f"    {mode}: {format_rate(r[mode])}  [{stages}]")
    return lines


def format_training(r: dict) -> str:
    """Human-readable bench_training report."""
    lines = [
        f"training step on {r['device']}, batch {r['batch']} (stage counts {r['stage_counts']}, {r['data']} data): "
        f"joint {r['joint_step_s']:.3f}s, full resolution only {r['full_resolution_step_s']:.3f}s, "
        f"ratio {r['measured_ratio']:.3f} (predicted {r['predicted_ratio']:.3f})",
        f"  model FLOP rate: joint {format_rate(r['joint_rate'])}, full resolution {format_rate(r['full_resolution_rate'])}",
    ]  # fmt: skip
    if r["precomputed_ratio"] is not None:
        rates = r["samples_per_s"]
        lines.append(f"  online encoding {r['online_step_s']:.3f}s ({rates['online']:.1f} samples/s), precomputed "
                     f"{r['precomputed_step_s']:.3f}s ({rates['precomputed']:.1f} samples/s): "
                     f"ratio {r['precomputed_ratio']:.3f}")  # fmt: skip
    return "\n".join(lines)
