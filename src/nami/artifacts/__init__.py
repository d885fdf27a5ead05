"""What the kit keeps on disk: run directories, model directories, the weights in them, conversions.

layout.py    every file name of both layouts, and what makes two configs the same model (identity)
files.py     reading user files as data (safetensors, weights_only, a restricted FSDP index reader); writing
             files and directories so that a crash leaves no half of one; the one "refuse a non-empty
             output" rule; numbered output directories
weights.py   which weights a path stands for (the one rule), reading them into parts, trainer.init_from
run_dir.py   `RunDir`: claim a run directory from a config, where each output lives, its recorded config
lock.py      the lock a training process holds on its run directory
model_dir.py model directories: write, read, layer a YAML over the recorded config, the model card
export.py    a run -> a model directory (`nami export`, the end of training)
convert.py   the released NAMI-2B <-> a model directory (`nami convert official`)

Nothing here imports Lightning.
"""

from .layout import identity
from .run_dir import RunDir
from .weights import Weights, fitted_bridge, is_model_dir, read_weights, weights_source

__all__ = ["RunDir", "Weights", "fitted_bridge", "identity", "is_model_dir", "read_weights", "weights_source"]
