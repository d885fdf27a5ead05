"""One GPU's FSDP2 bf16 training step of the real NAMI-2B shape with random weights: step time and peak memory.

    .venv/bin/python scripts/gpu_step_2b.py [--config experiments/nami_2b.yaml] [--steps 3] [--json] [key=value ...]

What a rank of `make train-2b` holds and runs: the nested MM-DiT in float32 master weights, its EMA, AdamW state,
every block and then the root wrapped by `fully_shard` (a world of one here), bf16 autocast and activation
checkpointing as the config sets them, one joint batch split over the stages by `flow.stage_ratios`. The frozen
mT5 / CLIP / VAE are not loaded: their outputs (token states, pooled vector, latents) are random tensors of the
right shape, so the figures are the transformer's alone. Needs CUDA; exits 2 with one line without it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/nami_2b.yaml")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps; the first is warm-up")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_step_2b: error: needs a CUDA GPU", file=sys.stderr)
        return 2

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from data_modules.collate import stage_counts
    from nami.bridges import bridge_from_config
    from nami.config import load
    from nami.flow import PyramidFlow
    from nami.lit.precision import autocast_dtype
    from nami.models import TextEmbedding, build_model, model_fn

    cfg = load(args.config, args.overrides)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    device = torch.device("cuda", 0)
    mesh = init_device_mesh("cuda", (1,), mesh_dim_names=("data_parallel",))
    torch.manual_seed(cfg.seed)

    with device:  # built on the GPU: 8.5 GB of float32 weights need not pass through host memory
        model = build_model(cfg)
    model.grad_checkpointing = cfg.trainer.activation_checkpointing
    ema = copy.deepcopy(model).requires_grad_(False)
    for net in (model, ema):  # as JointFlowModule.configure_model: every block, then the root
        for block in net.blocks():
            fully_shard(block, mesh=mesh)
        fully_shard(net, mesh=mesh)
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    flow = PyramidFlow.from_config(cfg, bridge_from_config(cfg).to(device).requires_grad_(False))
    t = cfg.text_encoder
    counts = stage_counts(cfg.data.batch_size, flow.mix.ratios_at(0))
    sides = cfg.stage_latent_sizes()
    dtype = autocast_dtype(cfg.trainer.precision, "gpu")
    params = sum(p.numel() for p in model.parameters())

    def step() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for k, (n, side) in enumerate(zip(counts, sides)):
            if n == 0:
                continue
            x = torch.randn(n, cfg.autoencoder.channels, side, side, device=device)
            text = TextEmbedding(torch.randn(n, t.max_length, t.dim, device=device),
                                 torch.ones(n, t.max_length, dtype=torch.bool, device=device),
                                 torch.randn(n, t.pooled_dim, device=device))  # fmt: skip
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = flow.training_losses(model_fn(model), [(k, x)], [text]).total * n / sum(counts)
            loss.backward()  # per stage: only one stage's activations are alive at a time
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - o.ema_decay)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(args.steps)]
    report = {
        "device": torch.cuda.get_device_name(0),
        "config": args.config,
        "params": params,
        "stage_counts": counts,
        "image_tokens": [(s // cfg.model.patch_size) ** 2 for s in sides],
        "text_tokens": t.max_length,
        "precision": "bf16 autocast" if dtype is not None else "fp32",
        "activation_checkpointing": cfg.trainer.activation_checkpointing,
        "step_s": times,
        "step_s_after_warmup": sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }
    dist.destroy_process_group()
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:26s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
