"""One GPU's report in one JSON: the NAMI-2B training step (full and LoRA) against `nami plan`, its sampling, and
the released model's layout at 1024 px, all with random weights and no downloads.

    .venv/bin/python scripts/gpu_report.py [--out runs/gpu_report.json] [--tiny] [--steps N]
                                           [--sections NAME,...] [--total-budget S] [key=value ...]
    make gpu-report                       (GPU_REPORT=path, ARGS="...")

Sections, each in a forked child under its own time budget (`nami.perf.isolated`): an out-of-memory error, a crash
or a hang in one is recorded in its entry and the others still run; the JSON is rewritten after every section.
- train_full: what one rank of `make train-2b` runs (experiments/nami_2b.yaml, trainer.strategy=fsdp in a world
  of one, bf16, activation checkpointing, the stage losses, clipping, AdamW, EMA) through a Lightning Trainer on
  batches shaped like precomputed shards (random full-size latents and text states: the frozen encoders are
  neither built nor loaded). s/step (median after the first step), MFU from the module's FLOP model
  (`flops_per_batch`, `nami.perf.throughput`), torch.cuda.max_memory_allocated against `nami plan`'s total for
  the same config (`nami.perf.plan.plan_report`), and the parameter / gradient / optimizer / EMA bytes the module
  holds after the steps against the plan's.
- train_lora: the same with finetune.lora.rank=16, frozen base in bfloat16, on one GPU (trainer.strategy=auto).
- sampling_batch1, sampling_batch8: `nami bench sampling` (`nami.perf.bench.bench_sampling`) of NAMI-2B at full
  width, progressive, uniform and without nesting, at the token counts of 1024 px (a pixel-space stand-in at
  128 px, as in the README's earlier figures): s/image and % of the bf16 peak.
- official_1024: experiments/nami_2b_official.yaml at 1024 px: random tensors in the release's own key layout
  converted by `nami convert official`'s functions (every key and shape checked), a random VAE of the FLUX shape
  the release's vae/ holds, random text encoders of the release's widths; then `nami bench sampling` at batch 1
  (the release's fp16, integer timestep grid, scalar_bias bridge, negative prompt).
With --tiny, or where there is no CUDA device, the same sections run on the CPU on experiments/tiny.yaml (the
official section on the release's preset at tiny size) with a handful of steps; peak memory is then null with
the reason (the CPU allocator keeps no peak). Exit code 0 when every section finished, 1 otherwise (the JSON
holds every section either way), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
GIB = 1024**3
TOTAL_BUDGET_S = 450  # the sections' share of the report's 8 minutes on one GPU (imports and the JSON take the rest)
MIN_SECTION_S = 10  # a section is not started with less than this left of the total budget
PLAN_TOLERANCE = 0.15  # issue 22: the plan's total within 15% of the measured peak
RANDOM_RELEASE = "random tensors in the release's layout"
NO_PEAK_MEMORY = "not measurable on the CPU: torch.cuda.max_memory_allocated needs a CUDA device"

# the frozen encoders' outputs stand in for the encoders (what precomputed shards give the training step)
TRAINING = ["data.precomputed=true", "trainer.devices=1", "trainer.num_nodes=1"]
# NAMI-2B's token counts at 1024 px (256 / 1024 / 4096 image tokens, 256 text tokens) without a VAE or mT5
SAMPLING_2B = ["text_encoder.kind=learned", "autoencoder.kind=pixel", "autoencoder.channels=3",
               "autoencoder.downsample=1", "resolution=128"]  # fmt: skip
SAMPLING_TINY = ["text_encoder.kind=learned", "sampler.steps=[1,1,1]", "sampler.uniform_steps=3"]
# the release's preset at tiny size (as tests/official_fixtures.py shrinks it): 2 double + 3 single blocks of
# 2 heads x 128 (rope axes 16 / 56 / 56 kept), nested 1 / 3 / 5, on 32 px pixels; sampled in fp32, since a CPU
# multiplies fp16 many times slower than fp32 (the GPU section keeps the release's fp16)
OFFICIAL_TINY = ["resolution=32", "model.double_blocks=2", "model.single_blocks=3", "model.width=256", "model.heads=2",
                 "model.stage_depths=[1,3,5]", "autoencoder.kind=pixel", "autoencoder.channels=3",
                 "autoencoder.downsample=1", "text_encoder.kind=learned", "text_encoder.dim=32",
                 "text_encoder.pooled_dim=16", "text_encoder.max_length=16", "sampler.steps=[1,1,1]",
                 "sampler.uniform_steps=3", "sampler.precision=fp32"]  # fmt: skip


@dataclass(frozen=True)
class Setup:
    """Where the report runs: a GPU, or tiny on the CPU (`tiny`); optimizer steps per training section (the first
    is warm-up); timed rounds per sampling benchmark; key=value overrides for every section."""

    tiny: bool
    steps: int
    repeats: int = 1
    overrides: tuple[str, ...] = ()

    @property
    def device(self) -> str:
        return "cpu" if self.tiny else "cuda"


@dataclass(frozen=True)
class Section:
    name: str
    what: str
    config: Path
    overrides: tuple[str, ...]
    budget_s: float
    run: Callable[["Section", Setup], dict]


def sections(setup: Setup) -> list[Section]:
    """The report's sections, in the order they run, for a GPU or for tiny on the CPU."""
    tiny, size = setup.tiny, "tiny" if setup.tiny else "2B"
    device = [f"trainer.accelerator={'cpu' if tiny else 'gpu'}"]
    train_cfg = EXPERIMENTS / ("tiny.yaml" if tiny else "nami_2b.yaml")
    train = [*TRAINING, *device, f"trainer.max_steps={setup.steps}"]
    lora = [f"finetune.lora.rank={4 if tiny else 16}"] + ([] if tiny else ["finetune.base_dtype=bfloat16"])
    sampling_cfg = EXPERIMENTS / ("tiny.yaml" if tiny else "nami_2b.yaml")
    sampling = [*(SAMPLING_TINY if tiny else SAMPLING_2B), *device]
    official = [*(OFFICIAL_TINY if tiny else ["text_encoder.kind=learned"]), *device]
    release = ("official_tiny", "the release's layout at tiny size") if tiny else \
        ("official_1024", "the release's layout at 1024 px")  # fmt: skip
    specs = [
        ("train_full", f"{size} training step, FSDP world of one, AdamW + EMA", train_cfg,
         [*train, "trainer.strategy=fsdp"], 100, train_section),
        ("train_lora", f"{size} LoRA training step on one device", train_cfg,
         [*train, "trainer.strategy=auto", *lora], 100, train_section),
        ("sampling_batch1", f"{size} sampling, batch 1", sampling_cfg, sampling, 60,
         partial(sampling_section, batch=1)),
        ("sampling_batch8", f"{size} sampling, batch 8", sampling_cfg, sampling, 170,
         partial(sampling_section, batch=8)),
        (release[0], f"{release[1]}: random weights converted from its key layout, sampling at batch 1",
         EXPERIMENTS / "nami_2b_official.yaml", official, 100, official_section),
    ]  # fmt: skip
    return [Section(name, what, config, (*overrides, *setup.overrides), budget, run)
            for name, what, config, overrides, budget, run in specs]  # fmt: skip


# ---- measurements, run inside the forked children ------------------------------------------------------------
def device_name(setup: Setup) -> str:
    return "cpu" if setup.tiny else torch.cuda.get_device_name(0)


def peak_memory(setup: Setup) -> dict:
    if setup.tiny:
        return {"peak_memory_allocated_bytes": None, "peak_memory_reserved_bytes": None,
                "peak_memory_note": NO_PEAK_MEMORY}  # fmt: skip
    return {"peak_memory_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_memory_reserved_bytes": torch.cuda.max_memory_reserved()}  # fmt: skip


def held_bytes(tensors) -> int:
    """Bytes of the distinct tensors (a tensor listed twice, e.g. a quantisation map shared by every parameter,
    counts once); a sharded DTensor counts its local shard."""
    seen = {}
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
    return sum(seen.values())


def versus(planned: int | float, measured: int | float | None) -> dict:
    return {"planned": planned, "measured": measured,
            "ratio": measured / planned if measured is not None and planned else None}  # fmt: skip


def step_timer():
    """A callback recording the wall time and loss of each optimizer step (forward, backward, clipping, the
    optimizer, the EMA)."""
    import lightning as L

    class StepTimes(L.Callback):
        def __init__(self):
            self.times, self.losses, self._start = [], [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._start)
            self.losses.append(float(outputs["loss"]))

    return StepTimes()


def train_section(section: Section, setup: Setup) -> dict:
    """Optimizer steps of JointFlowModule through the kit's own Trainer; measured against the plan."""
    import lightning as L
    from torch.utils.data import DataLoader

    from nami.config import load
    from nami.lit.joint_flow import JointFlowModule
    from nami.lit.runner import trainer_for
    from nami.parts import build_parts
    from nami.perf.bench import synthetic_batch
    from nami.perf.plan import DEFAULT_CARD, plan_report
    from nami.perf.throughput import peak_tflops, rate
    from nami.sampling.precision import resolve_precision
    from nami.text_embedding import TextEmbedding

    cfg = load(section.config, section.overrides)
    # the plan reads `auto` as a GPU runs it (bf16-mixed): give both the precision this device trains in
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    cfg = load(section.config, [*section.overrides, f"trainer.precision={precision}"])
    name = device_name(setup)
    plan = plan_report(cfg, card=name if peak_tflops(name) else DEFAULT_CARD)

    L.seed_everything(cfg.seed, verbose=False)
    t = cfg.text_encoder
    unconditional = TextEmbedding(torch.randn(1, t.max_length, t.dim), torch.ones(1, t.max_length, dtype=torch.bool),
                                  torch.randn(1, t.pooled_dim))  # fmt: skip
    with torch.device(setup.device):  # built where it trains: 8.5 GB of float32 weights need not pass the host
        module = JointFlowModule(cfg, build_parts(cfg, fitted=False, encoders=False), unconditional=unconditional)
    trained = module.trained_parameters()
    lora = cfg.finetune.lora.rank
    # adapters exist once the module is built (its EMA copies the trained tensors in __init__): check before training
    if lora and not any(".lora_" in n for n, _ in trained):
        raise RuntimeError(f"finetune.lora.rank={lora}: JointFlowModule trained no LoRA adapter ({len(trained)} base "
                           "tensors would train instead); LoRA training is not in this build")  # fmt: skip
    batch = synthetic_batch(cfg, module.flow.mix, random_latents=True)  # what precomputed shards give
    timer = step_timer()
    trainer = trainer_for(cfg, None, logger=False, callbacks=[timer], max_steps=setup.steps, enable_progress_bar=False)
    loader = DataLoader([batch] * setup.steps, batch_size=None, collate_fn=lambda b: b)  # ready batches
    trainer.fit(module, train_dataloaders=loader)

    trained = module.trained_parameters()
    optimizer = trainer.optimizers[0]
    held = {"parameters": held_bytes(p for n, p in module.named_parameters() if not n.startswith("ema.")),
            "gradients": held_bytes(p.grad for p in module.parameters() if p.grad is not None),
            "optimizer": held_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)),
            "ema": held_bytes(module.ema.parameters())}  # fmt: skip
    after = timer.times[1:] or timer.times
    step_s = sorted(after)[len(after) // 2]
    achieved = rate(module.flops_per_batch, step_s, name)
    memory = peak_memory(setup)
    peak = memory["peak_memory_allocated_bytes"]
    total = plan["bytes"]["total"]
    return {
        "device": name, "precision": precision, "strategy": cfg.trainer.strategy, "optimizer": cfg.optim.name,
        "activation_checkpointing": cfg.trainer.activation_checkpointing, "batch_size": cfg.data.batch_size,
        "stage_counts": batch.counts, "lora_rank": lora, "base_dtype": cfg.finetune.base_dtype,
        "params": {"total": sum(p.numel() for p in module.model.parameters()),
                   "trained": sum(p.numel() for _, p in trained)},
        "step_s": timer.times, "loss": timer.losses, "s_per_step": step_s,
        "model_flop_per_step": module.flops_per_batch, "tflops": achieved["tflops"], "mfu": achieved["peak_fraction"],
        **({} if achieved["peak_fraction"] is not None else {"mfu_note": f"no known bf16 peak for {name}"}),
        **memory,
        "plan": {"card": plan["step"]["card"], "bytes": plan["bytes"], "params": plan["params"],
                 "stage_counts": plan["stage_counts"], "step_s_at_mfu": plan["step"]["seconds"],
                 "mfu_assumed": plan["step"]["mfu"]},
        "plan_vs_measured": {
            "peak_memory": {**versus(total, peak),
                            "within_15_percent": abs(peak / total - 1) <= PLAN_TOLERANCE if peak is not None else None,
                            **({"note": NO_PEAK_MEMORY} if peak is None else {})},
            **{key: versus(plan["bytes"][key], value) for key, value in held.items()},
        },
    }  # fmt: skip


def random_pipeline(cfg, device: str):
    """A Pipeline of freshly initialised networks, the MM-DiT and text encoder built on `device` directly (the
    2B model need not pass the host); returns (pipeline, parts)."""
    from nami.models import build_model, build_text_encoder
    from nami.parts import build_parts
    from nami.sampling import Pipeline

    parts = build_parts(cfg, fitted=False, networks=False)  # the bridge, the flow and the autoencoder
    with torch.device(device):
        parts = replace(parts, model=build_model(cfg), text_encoder=build_text_encoder(cfg.text_encoder))
    for module in (parts.model, parts.text_encoder, parts.bridge):
        module.eval().requires_grad_(False)
    return Pipeline.from_config(parts, cfg).to(device), parts


def sampling_summary(report: dict) -> dict:
    """The figures of a `bench_sampling` report per mode: seconds per call and per image, TFLOP/s, % of peak."""
    out = {key: report[key] for key in ("device", "batch", "height", "width", "steps", "uniform_steps", "guidance",
                                        "peak_tflops")}  # fmt: skip
    for mode in ("uniform", "progressive", "no_nesting"):
        seconds = report["uniform_s"] if mode == "uniform" else report[mode]["seconds"]
        fraction = report[mode]["peak_fraction"]
        out[mode] = {"s_per_call": seconds, "s_per_image": seconds / report["batch"],
                     "tflops": report[mode]["tflops"],
                     "pct_bf16_peak": 100 * fraction if fraction is not None else None}  # fmt: skip
        if mode != "uniform":
            out[mode].update({key: report[mode][key] for key in ("measured_ratio", "predicted_ratio")})
    if report["peak_tflops"] is None:
        out["pct_bf16_peak_note"] = f"no known bf16 peak for {report['device']}"
    return out


def sampling_section(section: Section, setup: Setup, batch: int) -> dict:
    from nami.config import load
    from nami.perf.bench import bench_sampling

    cfg = load(section.config, section.overrides)
    pipe, _ = random_pipeline(cfg, setup.device)
    report = bench_sampling(cfg, pipe, batch=batch, repeats=setup.repeats)
    return {**sampling_summary(report), "bench": report}


def write_random_vae(folder: Path) -> Path:
    """A randomly initialised diffusers AutoencoderKL of the FLUX VAE's shape (the release's vae/: 16 channels,
    8x), from the architecture `nami plan` knows it by; nothing is downloaded."""
    from diffusers import AutoencoderKL

    from nami.perf.plan import ENCODER_PRESETS

    AutoencoderKL.from_config(ENCODER_PRESETS["flux-vae"][1]).save_pretrained(folder)
    return folder


def load_release_layout(cfg, parts, device: str) -> dict:
    """Random tensors in the release's key layout (diffusers Flux names, bridge_flow.bin's scale / shift), converted
    and checked key by key as `nami convert official` does, loaded strictly into the parts."""
    from nami.artifacts.convert import official_bridge, official_transformer_to_kit
    from nami.models import build_model
    from nami.models.official import kit_bridge_to_official, kit_to_official

    m, g = cfg.model, torch.Generator(device).manual_seed(cfg.seed)
    start = time.perf_counter()
    with torch.device("meta"):
        layout = kit_to_official(build_model(cfg).state_dict(), m.double_blocks, m.single_blocks)
    release = {k: 0.02 * torch.randn(v.shape, generator=g, device=device) for k, v in layout.items()}
    parts.model.load_state_dict(official_transformer_to_kit(cfg, release, where=RANDOM_RELEASE), strict=True)
    bridge = {k: 0.02 * torch.randn(v.shape, generator=g, device=device)
              for k, v in kit_bridge_to_official(parts.bridge.state_dict()).items()}  # fmt: skip
    parts.bridge.load_state_dict(official_bridge(cfg, bridge, where=RANDOM_RELEASE).state_dict(), strict=True)
    return {"release_tensors": len(release), "release_parameters": sum(v.numel() for v in release.values()),
            "bridge_tensors": len(bridge), "seconds": time.perf_counter() - start}  # fmt: skip


def official_section(section: Section, setup: Setup) -> dict:
    from nami.config import load
    from nami.perf.bench import bench_sampling

    with tempfile.TemporaryDirectory(prefix="nami-gpu-report-") as tmp:
        overrides = list(section.overrides)
        vae = None
        if not setup.tiny:  # the release's VAE shape, random: the sample's decode runs as the release's does
            vae = write_random_vae(Path(tmp) / "vae")
            overrides.insert(0, f"autoencoder.path={vae}")
        cfg = load(section.config, overrides)
        pipe, parts = random_pipeline(cfg, setup.device)
        conversion = load_release_layout(cfg, parts, setup.device)
        report = bench_sampling(cfg, pipe, batch=1, repeats=setup.repeats)
    return {"conversion": conversion, "precision": cfg.sampler.precision, "timestep_grid": cfg.sampler.timestep_grid,
            "bridge": cfg.bridge.kind, "rope_axes": list(cfg.model.rope_axes or []),
            "autoencoder": "random FLUX-shaped VAE (nami.perf.plan preset flux-vae)" if vae else cfg.autoencoder.kind,
            **sampling_summary(report), "bench": report}  # fmt: skip


# ---- the parent: sections in turn, the environment, the JSON --------------------------------------------------
def git_commit() -> dict:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "commit_note": f"{REPO} is not a git checkout (or git is missing)"}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def environment(setup: Setup) -> dict:
    """Device, versions and commit; asked after the last fork (CUDA may be initialised here only now)."""
    from importlib.metadata import version

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "lightning": version("lightning"), "platform": platform.platform(),
           "cuda_available": torch.cuda.is_available(), **git_commit()}  # fmt: skip
    if setup.tiny:
        return {**env, "device": "cpu", "cpu": cpu_model(), "cpu_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(0)
    return {**env, "device": props.name, "device_memory_bytes": props.total_memory,
            "device_count": torch.cuda.device_count(), "compute_capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version()}  # fmt: skip


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())  # fmt: skip


def plain(value):
    """JSON-safe: a non-finite float becomes its name ("nan", "inf"), which no check mistakes for a figure."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(plain(report), indent=1) + "\n")
    tmp.replace(out)


def headline(name: str, entry: dict) -> str:
    text = f"{name:16s} {entry['status']:13s} {entry['wall_s']:6.1f} s"
    if entry["status"] != "ok":
        return f"{text}  {entry.get('error', '')}"
    if isinstance(entry.get("s_per_step"), float):
        mfu = f", MFU {100 * entry['mfu']:.1f}%" if entry["mfu"] is not None else ""
        peak = entry["plan_vs_measured"]["peak_memory"]
        memory = (f", peak {peak['measured'] / GIB:.1f} GiB vs plan {peak['planned'] / GIB:.1f} GiB"
                  if peak["measured"] is not None else f", plan {peak['planned'] / GIB:.2f} GiB")  # fmt: skip
        return f"{text}  {entry['s_per_step']:.3f} s/step{mfu}{memory}"
    if isinstance(entry.get("progressive"), dict) and isinstance(entry.get("uniform"), dict):
        p, u = entry["progressive"], entry["uniform"]
        return f"{text}  progressive {p['s_per_image']:.3f} s/image, uniform {u['s_per_image']:.3f} s/image"
    return text


def preload() -> None:
    """Import what the sections use once, in the parent: every forked child starts with it loaded."""
    import lightning  # noqa: F401

    import nami.artifacts.convert  # noqa: F401
    import nami.lit.joint_flow  # noqa: F401
    import nami.lit.runner  # noqa: F401
    import nami.perf.bench  # noqa: F401
    import nami.perf.plan  # noqa: F401


def run_report(setup: Setup, chosen: list[Section], out: Path, total_budget: float, tiny_reason: str | None) -> dict:
    from nami.perf.isolated import run_isolated

    start = time.perf_counter()
    report = {"report": "scripts/gpu_report.py", "mode": "tiny" if setup.tiny else "gpu", "tiny_reason": tiny_reason,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "total_budget_s": total_budget, "steps": setup.steps, "sampling_repeats": setup.repeats,
              "overrides": list(setup.overrides), "sections": {}}  # fmt: skip
    for section in chosen:
        left = total_budget - (time.perf_counter() - start)
        entry = {"what": section.what, "config": str(section.config.relative_to(REPO)),
                 "overrides": list(section.overrides), "budget_s": min(section.budget_s, max(left, 0.0))}  # fmt: skip
        if left < MIN_SECTION_S:
            entry.update(status="skipped", wall_s=0.0,
                         error=f"the report's total budget of {total_budget:.0f} s was spent")  # fmt: skip
        else:
            outcome = run_isolated(partial(section.run, section, setup), entry["budget_s"])
            entry.update(status=outcome.status, wall_s=outcome.wall_s)
            if outcome.status == "ok":
                entry.update(outcome.result)
            else:
                entry.update(error=outcome.error, traceback=outcome.traceback,
                             peak_memory_allocated_bytes=outcome.peak_memory_bytes)  # fmt: skip
        report["sections"][section.name] = entry
        write(report, out)
        print(headline(section.name, entry), flush=True)
    report["environment"] = environment(setup)
    report["wall_s"] = time.perf_counter() - start
    write(report, out)
    return report


def cuda_probe() -> dict:
    if not torch.cuda.is_available():
        return {"cuda": False}
    torch.zeros(1, device="cuda")  # a context is made and used: the GPU works, not only is listed
    return {"cuda": True, "device": torch.cuda.get_device_name(0)}


def cuda_missing() -> str | None:
    """Why the report cannot use a GPU (None: it can), asked in a forked child: this process must not initialise
    CUDA before the sections fork, and even asking CUDA for its device count may do so."""
    from nami.perf.isolated import run_isolated

    probe = run_isolated(cuda_probe, 120)
    if probe.status != "ok":
        return f"no usable CUDA device ({probe.status}: {probe.error})"
    return None if probe.result["cuda"] else "no CUDA device"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_report.json"), help="the JSON written")
    parser.add_argument("--tiny", action="store_true", help="tiny on the CPU (the default without CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per training section, the first "
                                                                "warm-up (default 4 on a GPU, 3 on tiny)")  # fmt: skip
    parser.add_argument("--sections", default=None, help="comma-separated section names (default: all)")
    parser.add_argument("--total-budget", type=float, default=TOTAL_BUDGET_S, help="seconds for all sections")
    parser.add_argument("overrides", nargs="*", help="key=value for every section's config")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 2:
        parser.error("--steps needs at least 2 (the first is warm-up)")
    tiny_reason = "--tiny" if args.tiny else cuda_missing()
    setup = Setup(tiny=tiny_reason is not None, steps=args.steps or (3 if tiny_reason else 4),
                  overrides=tuple(args.overrides))  # fmt: skip
    chosen = sections(setup)
    if args.sections:
        wanted = args.sections.split(",")
        unknown = [n for n in wanted if n not in {s.name for s in chosen}]
        if unknown:
            parser.error(f"--sections: unknown {', '.join(unknown)}; known: {', '.join(s.name for s in chosen)}")
        chosen = [s for s in chosen if s.name in wanted]
    if tiny_reason:
        print(f"gpu_report: {tiny_reason}: the sections run on tiny, on the CPU", file=sys.stderr)
    preload()
    report = run_report(setup, chosen, args.out, args.total_budget, tiny_reason)
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    return 0 if all(e["status"] == "ok" for e in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
