"""The small fine-tuning setup test_trainable, test_optimizers and test_lora_training share: 60 synthetic shapes
(the `shapes` fixture of conftest.py) and tiny with a learned text encoder, an identity bridge and one-step
previews, run in-process on the CPU."""

from __future__ import annotations

from nami.config import load

from .helpers import EXPERIMENTS, LEARNED_TEXT


def finetune_tiny(root, shapes, *overrides):
    return load(EXPERIMENTS / "tiny.yaml", [
        *LEARNED_TEXT, f"data.shards={shapes}/*.tar", "data.batch_size=6", "data.num_workers=0",
        f"trainer.default_root_dir={root}", "trainer.accelerator=cpu", "trainer.precision=32-true",
        "bridge.kind=identity", "log.sample_prompts=[a red circle]", "sampler.steps=[1,1,1]", "optim.warmup_steps=2",
        *overrides,
    ])  # fmt: skip
