"""`nami info`: parameters (counted on the meta device), schedule, tokens, FLOPs and predicted speed."""

from __future__ import annotations

import torch

from ..config import NamiConfig
from ..flow import PyramidFlow
from ..models import bucket_costs, build_model, cost_summary


def parameter_counts(cfg: NamiConfig) -> dict:
    """Total and per-stage parameter counts of the MM-DiT, without allocating any weight."""
    with torch.device("meta"):
        model = build_model(cfg)
    per_stage = []
    for k in range(cfg.num_stages):
        unique = {id(p): p.numel() for p in model.stage_parameters(k)}
        per_stage.append(sum(unique.values()))
    return {"params_total": sum(p.numel() for p in model.parameters()), "params_per_stage": per_stage}


def info_report(cfg: NamiConfig) -> dict:
    """Everything `nami info` prints, as plain numbers; `buckets` (per aspect-ratio bucket: size, tokens and FLOPs
    per stage, predicted ratio) when data.buckets is not square."""
    flow = PyramidFlow.from_config(cfg, bridge=None)  # the schedule and grids need no bridge weights
    buckets = {} if cfg.data.buckets == "square" else {"buckets": bucket_costs(cfg)}
    return {
        "name": cfg.name,
        "num_stages": cfg.num_stages,
        "resolution": cfg.resolution,
        "latent_sizes": cfg.stage_latent_sizes(),
        "stage_depths": list(cfg.model.stage_depths),
        **parameter_counts(cfg),
        **flow.schedule.summary(),
        **flow.sampler_summary(cfg.sampler.steps),
        "steps": list(cfg.sampler.steps),
        "uniform_steps": cfg.sampler.uniform_steps,
        **cost_summary(cfg),
        **buckets,
    }


def format_report(report: dict) -> str:
    """Human-readable version of info_report."""
    k = report["num_stages"]
    lines = [
        f"{report['name']}: {report['params_total'] / 1e6:,.1f}M parameters, {k} stages, "
        f"{report['resolution']} px (latent {report['latent_sizes'][-1]})",
        f"{'stage':>5} {'latent':>6} {'blocks':>6} {'params':>10} {'img tok':>7} {'sigma start->end':>17} "
        f"{'model time':>14} {'GFLOP/step':>11} {'steps':>5}",
    ]
    for s in range(k):
        t0, t1 = report["model_time_windows"][s]
        lines.append(
            f"{s:>5} {report['latent_sizes'][s]:>6} {report['stage_depths'][s]:>6} "
            f"{report['params_per_stage'][s] / 1e6:>9.1f}M {report['tokens_per_stage'][s]:>7} "
            f"{report['start_sigmas'][s]:>8.4f}->{report['end_sigmas'][s]:.4f} "
            f"{t0:>6.1f}->{t1:>6.1f} {report['flops_per_step_per_stage'][s] / 1e9:>11.2f} {report['steps'][s]:>5}"
        )
    lines.append(
        f"text tokens {report['text_tokens']}; predicted progressive/uniform time "
        f"({'/'.join(map(str, report['steps']))} vs {report['uniform_steps']} steps): "
        f"{report['predicted_ratio']:.3f} (without nesting {report['predicted_ratio_no_nesting']:.3f})"
    )
    if "buckets" in report:
        lines.append(f"{len(report['buckets'])} aspect-ratio buckets (height x width px: image tokens per stage, "
                     "GFLOP/step per stage, predicted progressive/uniform):")  # fmt: skip
        for b in report["buckets"]:
            tokens = "/".join(map(str, b["tokens_per_stage"]))
            gflops = "/".join(f"{f / 1e9:.2f}" for f in b["flops_per_step_per_stage"])
            lines.append(f"  {b['height']:>5} x {b['width']:<5} {tokens:>16}  {gflops:>24}  {b['predicted_ratio']:.3f}")
    return "\n".join(lines)
