"""One GPU's FSDP2 training step of the real NAMI-2B shape with random weights: step time, peak memory, MFU.

    .venv/bin/python scripts/gpu_step_2b.py [--config experiments/nami_2b.yaml] [--steps 3] [--device cuda|cpu]
                                            [--json] [key=value ...]

What a rank of `make train-2b` runs, through the same code: a Lightning Trainer with the strategy of
`trainer.strategy=fsdp` (a world of one) around `JointFlowModule`, whose configure_model shards every block
with `fully_shard`, whose training_step computes the stage losses (bf16 autocast and activation checkpointing
as the config sets them), then gradient clipping, AdamW and the EMA update. The batches are those precomputed
shards give (data.precomputed): random full-size latents, text states and pooled vectors of the real shapes,
one joint batch split over the stages by `flow.stage_ratios`. So the frozen mT5 / CLIP / VAE are neither built
nor loaded and the figures are the transformer's alone; model TFLOP/s and MFU come from the module's own FLOP
model (`flops_per_batch`, what Lightning's ThroughputMonitor reads). Needs CUDA and exits 2 with one line
without it; `--device cpu` runs the same on the CPU (gloo) for tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def step_timer():
    """A callback recording the wall time of each optimizer step (forward, backward, clipping, AdamW, EMA) and
    its loss (built here: Lightning is imported only once the device is known to be there)."""
    import lightning as L

    class StepTimes(L.Callback):
        def __init__(self):
            self.times, self.losses, self._start = [], [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._start)
            self.losses.append(float(outputs["loss"]))

    return StepTimes()


def _full(p: torch.Tensor) -> torch.Tensor:
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().cpu()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/nami_2b.yaml")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps; the first is warm-up")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the same run on the CPU")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_step_2b: error: needs a CUDA GPU (or --device cpu)", file=sys.stderr)
        return 2
    import lightning as L
    from torch.utils.data import DataLoader

    from nami.config import ConfigError, load
    from nami.lit.joint_flow import JointFlowModule
    from nami.lit.runner import trainer_for
    from nami.parts import build_parts
    from nami.perf.bench import synthetic_batch
    from nami.perf.throughput import rate
    from nami.sampling.precision import resolve_precision
    from nami.text_embedding import TextEmbedding

    accelerator = "gpu" if args.device == "cuda" else "cpu"
    fixed = ["data.precomputed=true", "trainer.strategy=fsdp", "trainer.devices=1", "trainer.num_nodes=1",
             f"trainer.accelerator={accelerator}", f"trainer.max_steps={args.steps}"]  # fmt: skip
    try:
        cfg = load(args.config, [*args.overrides, *fixed])
    except ConfigError as err:
        print(f"gpu_step_2b: error: {err}", file=sys.stderr)
        return 2

    L.seed_everything(cfg.seed, verbose=False)
    t = cfg.text_encoder
    states, pooled = torch.randn(1, t.max_length, t.dim), torch.randn(1, t.pooled_dim)
    unconditional = TextEmbedding(states, torch.ones(1, t.max_length, dtype=torch.bool), pooled)
    with torch.device(args.device):  # built where it trains: 8.5 GB of float32 weights need not pass the host
        module = JointFlowModule(cfg, build_parts(cfg, fitted=False, encoders=False), unconditional=unconditional)
    batch = synthetic_batch(cfg, module.flow.mix, random_latents=True)  # what precomputed shards give
    tracked = [n for n, _ in module.ema.named_parameters()][-8:]  # the head and the last block: a cheap witness
    ema_before = {n: _full(p) for n, p in module.ema.named_parameters() if n in tracked}
    params = sum(p.numel() for p in module.model.parameters())
    timer = step_timer()
    precision = resolve_precision(cfg.trainer.precision, accelerator)
    trainer = trainer_for(cfg, None, logger=False, callbacks=[timer], max_steps=args.steps, enable_progress_bar=False)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loader = DataLoader([batch] * args.steps, batch_size=None, collate_fn=lambda b: b)  # ready batches
    trainer.fit(module, train_dataloaders=loader)

    ema_change = max((_full(p) - ema_before[n]).abs().max().item() for n, p in module.ema.named_parameters()
                     if n in tracked)  # fmt: skip
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    after = timer.times[1:] or timer.times
    step_s = sorted(after)[len(after) // 2]
    achieved = rate(module.flops_per_batch, step_s, device)
    report = {
        "device": device,
        "config": args.config,
        "params": params,
        "stage_counts": batch.counts,
        "image_tokens": [(s // cfg.model.patch_size) ** 2 for s in cfg.stage_latent_sizes()],
        "text_tokens": t.max_length,
        "precision": precision,
        "activation_checkpointing": cfg.trainer.activation_checkpointing,
        "step_s": timer.times,
        "step_s_after_warmup": step_s,
        "loss": timer.losses,
        "ema_max_change": ema_change,
        "model_flop_per_step": module.flops_per_batch,
        "model_tflops": achieved["tflops"],
        "mfu": achieved["peak_fraction"],  # of the card's dense bf16 peak (None where unknown, CPUs included)
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if args.device == "cuda" else None,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:26s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
