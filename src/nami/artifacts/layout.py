"""The names of what the kit writes to disk, and what makes two configs the same model: one home for each.

A **run directory** (`runs/<name>/`, `RunDir`) is where `nami pretrain-bridge` and `nami train` work:

    config.yaml              the resolved config the directory was made with (identity below)
    checkpoints/stepNNNNNNNN.ckpt   Lightning checkpoints (files, or FSDP directories); best.ckpt / best.json
    weights.safetensors      the EMA weights at the end of training ("model." keys, float32, metadata step)
    bridges.safetensors      the fitted BridgeFlow; bridge_report.json its held-out MSE
    tb/, tb-bridge/          TensorBoard events of training and of bridge fitting
    samples/NNNN/            `nami sample` outputs and training grids (numbered: never replaced)
    eval/NNNN/               `nami eval --save-images`: the scored images, results.jsonl, report.json
    export/NNNN/             model directories written from the run
    keys-rank<r>.jsonl       with log.record_keys: the sample keys of every step
    .lock                    held by the process that trains in the directory

A **model directory** (`ModelDir`; `nami export`, `nami convert official`, `NamiPipeline.save_pretrained`) is
what sampling needs and nothing else, in the layout Hugging Face tools read:

    config.json              the model sections of the config (MODEL_SECTIONS) + "_training" provenance
    model.safetensors        weights, the same "model." (and trained "text_encoder.") keys as weights.safetensors
    bridges.safetensors      the bridge the weights were trained with
    README.md                a model card
or, for a LoRA run, adapter_model.safetensors + adapter_config.json (PEFT's names; the config names the base
model directory) in place of model.safetensors.

The two weights files hold one layout under two names: `weights.safetensors` in a run directory (the name the
design's CLI contract gives), `model.safetensors` in a model directory (the name Hugging Face tools look for).
`nami.artifacts.weights.weights_source` is the one rule that says which file a directory stands for.
"""

from __future__ import annotations

from typing import Any

# ---- run directories ---------------------------------------------------------------------------------------
RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
RUN_WEIGHTS = "weights.safetensors"
BRIDGES = "bridges.safetensors"
BRIDGE_REPORT = "bridge_report.json"
TENSORBOARD, TENSORBOARD_BRIDGE = "tb", "tb-bridge"
SAMPLES = "samples"
EVALS = "eval"
EXPORTS = "export"
LOCK = ".lock"
KEYS_GLOB = "keys-rank*.jsonl"
# Everything a run writes (what `trainer.run_dir_exists=overwrite` removes); the lock is the live process's.
RUN_OUTPUTS = (CHECKPOINTS, TENSORBOARD, TENSORBOARD_BRIDGE, SAMPLES, EVALS, RUN_WEIGHTS, BRIDGES, BRIDGE_REPORT, EXPORTS,
               RUN_CONFIG)  # fmt: skip
# What shows that training (not only bridge fitting) has happened in a run directory.
TRAINING_OUTPUTS = (CHECKPOINTS, TENSORBOARD, RUN_WEIGHTS)

# ---- model directories -------------------------------------------------------------------------------------
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_CARD = "README.md"
# A LoRA adapter (PEFT's file names): the adapter's tensors and its LoraConfig, whose base_model_name_or_path
# names the base model directory. A LoRA run's model directory holds these instead of model.safetensors.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MODEL_FORMAT = 1  # config.json's "_nami_format": bump when the layout changes incompatibly

# ---- what makes two configs the same model -----------------------------------------------------------------
# The sections that define the network, its flow and its inputs. A run directory refuses a config that
# differs in one of them; a model directory refuses an override of one of them.
IDENTITY_SECTIONS = ("resolution", "model", "flow", "bridge", "text_encoder", "autoencoder", "finetune")
# Keys inside those sections that do not change the model (where the bridge is read from, caching, dtype).
NOT_IDENTITY = ("bridge.weights", "text_encoder.cache_size", "text_encoder.dtype")
# What a model directory's config.json holds: the identity, the name and the sampler settings.
MODEL_SECTIONS = ("name", *IDENTITY_SECTIONS, "sampler")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def identity(config: dict) -> dict[str, Any]:
    """The dotted keys of a plain-dict config (`nami.config.to_dict`) that define the model, with values."""
    flat = _flat({k: config.get(k) for k in IDENTITY_SECTIONS})
    return {k: v for k, v in flat.items() if k not in NOT_IDENTITY}


def first_difference(recorded: dict, current: dict) -> tuple[str, Any, Any] | None:
    """(key, recorded value, current value) of the first identity key that differs; None if they agree."""
    old, new = identity(recorded), identity(current)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return key, old.get(key), new.get(key)
    return None
