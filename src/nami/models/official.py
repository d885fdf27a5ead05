"""The released NAMI-2B checkpoint layout <-> the kit's `NestedMMDiT` and `scalar_bias` bridge.

The release stores its transformer as a state dict in diffusers' `FluxTransformer2DModel` key layout
(patch 1 on 2x2-packed latent channels) and its bridge as `scale` (K-1,) plus `shift.k` (1, C, H, W). The kit
holds the same tensors under other names: q, k, v (and, in single blocks, the MLP input) fused into one
linear, and the final modulation's halves in the order (shift, scale) where diffusers has (scale, shift).
diffusers packs a latent's 2x2 patches channel-major (c, dy, dx), as `NestedMMDiT.patchify` does, so the
input and output projections carry over unchanged.

Everything here maps state dicts and nothing else: no I/O, no model built, no arithmetic besides
concatenating, splitting and reordering rows, so it runs on meta tensors (a full 2B shape check allocates
nothing) and a round trip reproduces every tensor bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import ConfigError

Tensors = Mapping[str, torch.Tensor]
LINEAR = ("weight", "bias")
NORM = ("weight",)


@dataclass(frozen=True)
class Rule:
    """kit module <- official modules: `same` (one to one), `fuse` (official rows concatenated in order) or
    `swap` (the two halves of the rows exchanged: adaLN (scale, shift) <-> (shift, scale))."""

    kit: str
    official: tuple[str, ...]
    how: str = "same"
    params: tuple[str, ...] = LINEAR


def transformer_rules(double_blocks: int, single_blocks: int) -> list[Rule]:
    """Every module of a model with this many blocks, in the kit's parameter order."""
    rules = [
        Rule("img_in", ("x_embedder",)),
        Rule("txt_in", ("context_embedder",)),
        Rule("time_in.fc1", ("time_text_embed.timestep_embedder.linear_1",)),
        Rule("time_in.fc2", ("time_text_embed.timestep_embedder.linear_2",)),
        Rule("vector_in.fc1", ("time_text_embed.text_embedder.linear_1",)),
        Rule("vector_in.fc2", ("time_text_embed.text_embedder.linear_2",)),
    ]
    for i in range(double_blocks):
        k, o = f"double_blocks.{i}", f"transformer_blocks.{i}"
        rules += [
            Rule(f"{k}.img_mod.linear", (f"{o}.norm1.linear",)),
            Rule(f"{k}.txt_mod.linear", (f"{o}.norm1_context.linear",)),
            Rule(f"{k}.img_attn.qkv", tuple(f"{o}.attn.to_{x}" for x in "qkv"), "fuse"),
            Rule(f"{k}.img_attn.norm.q", (f"{o}.attn.norm_q",), params=NORM),
            Rule(f"{k}.img_attn.norm.k", (f"{o}.attn.norm_k",), params=NORM),
            Rule(f"{k}.img_attn.proj", (f"{o}.attn.to_out.0",)),
            Rule(f"{k}.txt_attn.qkv", tuple(f"{o}.attn.add_{x}_proj" for x in "qkv"), "fuse"),
            Rule(f"{k}.txt_attn.norm.q", (f"{o}.attn.norm_added_q",), params=NORM),
            Rule(f"{k}.txt_attn.norm.k", (f"{o}.attn.norm_added_k",), params=NORM),
            Rule(f"{k}.txt_attn.proj", (f"{o}.attn.to_add_out",)),
            Rule(f"{k}.img_mlp.fc1", (f"{o}.ff.net.0.proj",)),
            Rule(f"{k}.img_mlp.fc2", (f"{o}.ff.net.2",)),
            Rule(f"{k}.txt_mlp.fc1", (f"{o}.ff_context.net.0.proj",)),
            Rule(f"{k}.txt_mlp.fc2", (f"{o}.ff_context.net.2",)),
        ]
    for i in range(single_blocks):
        k, o = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        rules += [
            Rule(f"{k}.mod.linear", (f"{o}.norm.linear",)),
            Rule(f"{k}.linear1", (*(f"{o}.attn.to_{x}" for x in "qkv"), f"{o}.proj_mlp"), "fuse"),
            Rule(f"{k}.qk_norm.q", (f"{o}.attn.norm_q",), params=NORM),
            Rule(f"{k}.qk_norm.k", (f"{o}.attn.norm_k",), params=NORM),
            Rule(f"{k}.linear2", (f"{o}.proj_out",)),
        ]
    rules += [Rule("final.mod.linear", ("norm_out.linear",), "swap"), Rule("final.linear", ("proj_out",))]
    return rules


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def official_to_kit(state: Tensors, double_blocks: int, single_blocks: int) -> dict[str, torch.Tensor]:
    """Kit `NestedMMDiT` state dict (no "model." prefix) from an official-layout one. Call `check_keys` first:
    a missing key here is a KeyError."""
    out = {}
    for rule in transformer_rules(double_blocks, single_blocks):
        for param in rule.params:
            parts = [state[f"{name}.{param}"] for name in rule.official]
            if rule.how == "fuse":
                out[f"{rule.kit}.{param}"] = torch.cat(parts, dim=0)
            elif rule.how == "swap":
                out[f"{rule.kit}.{param}"] = _swap_halves(parts[0])
            else:
                out[f"{rule.kit}.{param}"] = parts[0]
    return out


def kit_to_official(state: Tensors, double_blocks: int, single_blocks: int) -> dict[str, torch.Tensor]:
    """Official-layout state dict from a kit `NestedMMDiT` one (the inverse of `official_to_kit`)."""
    width = state["img_in.weight"].shape[0]
    out = {}
    for rule in transformer_rules(double_blocks, single_blocks):
        for param in rule.params:
            t = state[f"{rule.kit}.{param}"]
            if rule.how == "fuse":  # q, k, v are `width` rows each; a single block's MLP input takes the rest
                sizes = [width] * 3 + ([t.shape[0] - 3 * width] if len(rule.official) == 4 else [])
                pieces = t.split(sizes, dim=0)
            else:
                pieces = (_swap_halves(t) if rule.how == "swap" else t,)
            out.update({f"{name}.{param}": piece for name, piece in zip(rule.official, pieces)})
    return out


def official_bridge_to_kit(state: Tensors) -> dict[str, torch.Tensor]:
    """Kit scalar_bias state (scale, bias.j) from the release's bridge_flow.bin (scale, shift.j: 1xCxHxW)."""
    shifts = sorted((k for k in state if k.startswith("shift.")), key=lambda k: int(k.split(".")[1]))
    return {"scale": state["scale"], **{f"bias.{j}": state[k][0] for j, k in enumerate(shifts)}}


def kit_bridge_to_official(state: Tensors) -> dict[str, torch.Tensor]:
    """The inverse of `official_bridge_to_kit`."""
    biases = sorted((k for k in state if k.startswith("bias.")), key=lambda k: int(k.split(".")[1]))
    return {"scale": state["scale"], **{f"shift.{j}": state[k][None] for j, k in enumerate(biases)}}


def check_keys(state: Tensors, expected: Tensors, key: str, where: str, what: str) -> None:
    """Every key of `expected` present with its shape, and nothing else; the first fault is one ConfigError
    line under `key` (the option) naming `where` (the file), the tensor and `what` (the model to fit)."""
    for name, want in expected.items():
        if name not in state:
            raise ConfigError(key, f"{where} lacks {name}, which {what} has")
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise ConfigError(key, f"{where}: {name} is a {type(got).__name__}, not a tensor")
        if tuple(got.shape) != tuple(want.shape):
            have, need = list(got.shape), list(want.shape)
            raise ConfigError(key, f"{where}: {name} has shape {have}, {what} needs {need}")
    for name in state:
        if name not in expected:
            raise ConfigError(key, f"{where} holds {name}, which {what} does not have")


def kit_lora_to_diffusers(state: Tensors, scale: float, double_blocks: int, single_blocks: int, width: int,
                          prefix: str = "transformer") -> dict[str, torch.Tensor]:  # fmt: skip
    """A kit LoRA adapter ("<kit module>.lora_A.weight" / ".lora_B.weight", as PEFT saves it) in diffusers'
    Flux LoRA keys ("transformer.<diffusers module>.lora_A.weight"), what `FluxPipeline.load_lora_weights`
    reads. A fused kit projection's adapter splits exactly: delta = scale * B @ A, and splitting the rows of the
    delta is splitting the rows of B, so every official part gets the same A and its rows of B. The adapter's
    scale (alpha / rank) is written into B, so the diffusers adapter needs no alpha (diffusers then takes
    alpha = rank, scale 1)."""
    rules = {rule.kit: rule for rule in transformer_rules(double_blocks, single_blocks)}
    out = {}
    for key, tensor in state.items():
        module, _, which = key.rpartition(".lora_")
        if module not in rules or which not in ("A.weight", "B.weight"):
            raise ConfigError("--transformer", f"the adapter holds {key}, which has no official counterpart")
        rule = rules[module]
        if which == "A.weight":
            pieces = (tensor,) * len(rule.official)
        elif rule.how == "fuse":
            sizes = [width] * 3 + ([tensor.shape[0] - 3 * width] if len(rule.official) == 4 else [])
            pieces = (scale * tensor).split(sizes, dim=0)
        else:
            pieces = (scale * (_swap_halves(tensor) if rule.how == "swap" else tensor),)
        for name, piece in zip(rule.official, pieces):
            out[f"{prefix}.{name}.lora_{which}"] = piece.contiguous().clone()
    return out
