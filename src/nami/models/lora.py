"""LoRA adapters on the nested MM-DiT, through PEFT (the library the field uses; nothing here re-implements LoRA).

`add_adapter` injects PEFT `LoraLayer`s into the linear layers `finetune.lora.targets` / `.stages` select
(`selection.lora_target_modules`): the base layer keeps its weight, the adapter adds scale * B(A(x)) with
scale = alpha / rank (times a per-adapter factor set with `set_scales`). Several adapters may sit on one model
and be active together. Adapter tensors are named as PEFT saves them, e.g.
"double_blocks.0.img_attn.qkv.lora_A.weight" (the adapter's name removed), which is also diffusers'
PEFT-format key once prefixed and mapped to its module names (`official.kit_lora_to_diffusers`).

Fusing writes each active adapter into its base weight (PEFT's `merge`); unfusing restores the base weights
kept aside at fusing time, so the base comes back bit for bit (PEFT's own `unmerge` subtracts the delta again,
which float arithmetic does not undo exactly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError, LoraConfig, ModelConfig
from .selection import lora_target_modules


def linear_names(model: nn.Module) -> list[str]:
    """Names of the model's linear layers (what adapters may target), those already wrapped by an adapter
    included under their own name (not their inner base layer or adapter matrices)."""
    from peft.tuners.lora import LoraLayer

    names = []
    for name, module in model.named_modules():
        inner = name.endswith(".base_layer") or ".lora_" in name
        if isinstance(module, LoraLayer) or (type(module) is nn.Linear and not inner):
            names.append(name)
    return names


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter is: its rank, alpha, dropout and the exact modules it sits on."""

    rank: int
    alpha: float
    dropout: float
    modules: tuple[str, ...]

    @classmethod
    def from_config(cls, lora: LoraConfig, model_cfg: ModelConfig, model: nn.Module) -> "AdapterSpec":
        targets = lora_target_modules(linear_names(model), lora.targets, lora.stages, model_cfg.stage_depths,
                                      model_cfg.double_blocks)  # fmt: skip
        return cls(lora.rank, float(lora.alpha if lora.alpha is not None else lora.rank), lora.dropout,
                   tuple(targets))  # fmt: skip

    def peft_config(self):
        """The PEFT `LoraConfig`: target_modules a regular expression matching exactly these module names."""
        from peft import LoraConfig as PeftLoraConfig

        pattern = "^(" + "|".join(re.escape(m) for m in self.modules) + ")$"
        return PeftLoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=pattern)

    @classmethod
    def from_peft(cls, config, model: nn.Module) -> "AdapterSpec":
        """From a PEFT `LoraConfig` as read from adapter_config.json: the modules are those of `model` its
        target_modules select (a regular expression, or names matched as PEFT matches them: by suffix)."""
        targets = config.target_modules
        names = linear_names(model)
        if isinstance(targets, str):
            modules = [n for n in names if re.fullmatch(targets, n)]
        else:
            modules = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
        return cls(int(config.r), float(config.lora_alpha), float(config.lora_dropout), tuple(modules))


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> every PEFT LoRA layer of the model."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters the model holds, in the order they were added."""
    names: list[str] = []
    for layer in lora_layers(model).values():
        names += [n for n in layer.lora_A.keys() if n not in names]
    return names


def add_adapter(model: nn.Module, spec: AdapterSpec, name: str = "default",
                state: dict[str, torch.Tensor] | None = None, key: str = "--lora") -> None:  # fmt: skip
    """Inject adapter `name` into `model` (its A initialised as PEFT does, its B zero: the model's output is
    unchanged) and, with `state`, load its tensors after checking every key and shape (a file for another
    model or other targets is one ConfigError naming `key`)."""
    from peft import inject_adapter_in_model

    if not spec.modules:
        raise ConfigError(key, "the adapter targets no linear layer of this model")
    if name in adapter_names(model):
        raise ConfigError(key, f"the model already holds an adapter named {name!r}")
    if state is not None:
        check_adapter_state(model, spec, state, key)
    inject_adapter_in_model(spec.peft_config(), model, adapter_name=name)
    if state is not None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state, adapter_name=name)


def check_adapter_state(model: nn.Module, spec: AdapterSpec, state: dict[str, torch.Tensor], key: str) -> None:
    """Every adapter tensor names a targeted linear of `model` and has the shape it needs: A (rank, in),
    B (out, rank); and every targeted linear has both."""
    modules = dict(model.named_modules())
    expected = {}
    for name in spec.modules:
        linear = modules[name]
        expected[f"{name}.lora_A.weight"] = (spec.rank, linear.in_features)
        expected[f"{name}.lora_B.weight"] = (linear.out_features, spec.rank)
    for name, tensor in state.items():
        if name not in expected:
            raise ConfigError(key, f"the adapter holds {name}, which this model's targets do not have (an adapter "
                                   "for another model or another finetune.lora.targets set?)")  # fmt: skip
        if tuple(tensor.shape) != expected[name]:
            raise ConfigError(key, f"the adapter's {name} has shape {list(tensor.shape)}, this model needs "
                                   f"{list(expected[name])} (an adapter for a base of another shape?)")  # fmt: skip
    missing = [name for name in expected if name not in state]
    if missing:
        raise ConfigError(key, f"the adapter lacks {missing[0]} (it was saved for other targets)")


def adapter_state(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors of adapter `name`, as PEFT saves them ("<module>.lora_A.weight", "<module>.lora_B.weight")."""
    from peft import get_peft_model_state_dict

    return {k: v.detach() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own state dict without adapters: what it would be with no LoRA injected (PEFT renames a
    wrapped layer's weight to "<module>.base_layer.weight")."""
    out = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = tensor
    return out


def set_active(model: nn.Module, scales: dict[str, float]) -> None:
    """Make exactly the adapters of `scales` active, each scaled by its factor (1: alpha / rank as trained)."""
    for layer in lora_layers(model).values():
        present = [n for n in scales if n in layer.lora_A]
        layer.set_adapter(present)
        for name in present:
            layer.set_scale(name, scales[name])
        layer.requires_grad_(False)  # set_adapter marks active adapters trainable; sampling trains nothing


def delta_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Base-layer weight name -> the sum of the active adapters' deltas (scale * B @ A), for merging."""
    out = {}
    for name, layer in lora_layers(model).items():
        deltas = [layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A]
        if deltas:
            out[f"{name}.weight"] = sum(deltas)
    return out


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base state dict with every active adapter written into its weight: a plain model's weights."""
    state = {k: v.detach().clone() for k, v in base_state_dict(model).items()}
    for name, delta in delta_weights(model).items():
        state[name] = (state[name].float() + delta.float()).to(state[name].dtype)
    return state


def fuse(model: nn.Module) -> dict[str, torch.Tensor]:
    """Write the active adapters into their base weights (PEFT's merge); returns the base weights as they were,
    for `unfuse`."""
    saved = {}
    for name, layer in lora_layers(model).items():
        active = [a for a in layer.active_adapters if a in layer.lora_A]
        if active and not layer.merged:
            saved[name] = layer.get_base_layer().weight.detach().clone()
            layer.merge(adapter_names=active)
    return saved


def unfuse(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Undo `fuse` exactly: PEFT's unmerge keeps its bookkeeping, then the saved base weights are put back."""
    for name, layer in lora_layers(model).items():
        if layer.merged:
            layer.unmerge()
        if name in saved:
            layer.get_base_layer().weight.data.copy_(saved[name])


# ---- adapters in a training module's state dict -----------------------------------------------------------------
TRAINING_ADAPTER = "default"  # the name a LoRA run's adapter has inside its model (PEFT's default name)


def is_adapter_tensor(name: str) -> bool:
    """Whether a state-dict name is an adapter matrix ("<module>.lora_A.<adapter>.weight" or as PEFT saves it)."""
    return ".lora_A." in name or ".lora_B." in name


def plain_name(name: str) -> str:
    """A wrapped layer's base tensor under the name it has without adapters ("<module>.base_layer.weight" ->
    "<module>.weight")."""
    return name.replace(".base_layer.", ".")


def split_adapter(state: dict[str, torch.Tensor], adapter: str = TRAINING_ADAPTER
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:  # fmt: skip
    """A state dict of a model holding adapter `adapter` -> (the plain model's tensors, the adapter's tensors
    named as PEFT saves them: "<module>.lora_A.weight"). Prefixes ("model.") are kept on both."""
    plain, lora = {}, {}
    for name, tensor in state.items():
        if is_adapter_tensor(name):
            lora[name.replace(f".{adapter}.", ".")] = tensor
        else:
            plain[plain_name(name)] = tensor
    return plain, lora


def with_adapter_names(model: nn.Module, plain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain model's tensors under the names of `model`, which holds adapters: each base tensor at its wrapped
    name, the adapters' own tensors as they are now (what trainer.init_from loads into a LoRA run's model)."""
    out, used = {}, set()
    for name, tensor in model.state_dict().items():
        if is_adapter_tensor(name):
            out[name] = tensor
        elif plain_name(name) in plain:
            out[name] = plain[plain_name(name)]
            used.add(plain_name(name))
    # names that fit nowhere stay, so the loader's check reports them
    return {**out, **{name: tensor for name, tensor in plain.items() if name not in used}}
