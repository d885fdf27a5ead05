"""Run as a script (a process of its own, as torch.distributed wants): gradients of the tiny MM-DiT with and
without FSDP2 for every stage, including stage 0, which ends on a double-stream block. Prints one JSON object.

    python tests/fsdp_grads_job.py
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import torch
import torch.distributed as dist


def main() -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29600 + os.getpid() % 300))
    dist.init_process_group("gloo", rank=0, world_size=1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from nami.config import load
    from nami.models import build_model, build_text_encoder

    cfg = load("experiments/tiny.yaml", ["text_encoder.kind=learned", "text_encoder.dim=64", "text_encoder.pooled_dim=64"])
    torch.manual_seed(0)
    plain = build_model(cfg)
    with torch.no_grad():  # move every weight off its init (zero heads would give zero gradients upstream)
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sharded = copy.deepcopy(plain)
    mesh = init_device_mesh("cpu", (1,))
    for block in sharded.blocks():
        fully_shard(block, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    text = build_text_encoder(cfg.text_encoder)(["a red circle", "two squares"])
    report = {"stages": {}, "view_warnings": 0}
    for k, side in enumerate(cfg.stage_latent_sizes()):
        x, t = torch.randn(2, 3, side, side), torch.tensor([500.0, 800.0])
        grads = []
        for model in (plain, sharded):
            model.zero_grad(set_to_none=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = model(x, t, text.states.detach(), text.mask, text.pooled.detach(), stage=k)
                out.pow(2).mean().backward()
            report["view_warnings"] += sum("view tensor" in str(w.message) for w in caught)
            grads.append({n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad)
                          for n, p in model.named_parameters() if p.grad is not None})  # fmt: skip
        a, b = grads
        report["stages"][k] = {
            "depth": cfg.model.depth(k),
            "same_names": sorted(a) == sorted(b),
            "max_abs_diff": max((a[n] - b[n]).abs().max().item() for n in a),
            "grad_norm": sum(g.pow(2).sum() for g in a.values()).sqrt().item(),
        }
    dist.destroy_process_group()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
