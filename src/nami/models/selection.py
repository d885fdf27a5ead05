"""Which parameters train and which modules carry adapters: `trainer.trainable` and `finetune.lora.targets` /
`finetune.lora.stages`, read the same way by training (`nami.lit.joint_flow`) and by the memory plan
(`nami.perf.plan`), so the plan counts exactly the tensors a run holds.

Names are those of the module the config trains: "model.<name in NestedMMDiT>" (e.g.
"model.double_blocks.0.img_attn.qkv.weight"), "text_encoder.<...>" for a text encoder that trains, "bridge.<...>".
Patterns are fnmatch patterns over those names; "stage:K" stands for every parameter of the blocks stage K adds
to stage K-1 (stage 0: its own blocks), over the nested block order [double..., single...].
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..config import ConfigError


def stage_blocks(stage_depths: list[int], double_blocks: int, stage: int) -> list[str]:
    """Module names ("double_blocks.i", "single_blocks.j") of the blocks stage `stage` adds."""
    first = stage_depths[stage - 1] if stage > 0 else 0
    return [f"double_blocks.{i}" if i < double_blocks else f"single_blocks.{i - double_blocks}"
            for i in range(first, stage_depths[stage])]  # fmt: skip


def _in_blocks(name: str, blocks: list[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in blocks)


def trainable_names(names: list[str], patterns: list[str] | None, stage_depths: list[int],
                    double_blocks: int) -> set[str]:  # fmt: skip
    """The names among `names` that `trainer.trainable` selects (every one of "model." and "text_encoder."
    when `patterns` is None). A pattern that selects nothing is a ConfigError naming it: a typo must not
    silently freeze the whole model."""
    if patterns is None:
        return {n for n in names if n.startswith(("model.", "text_encoder."))}
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern.startswith("stage:"):
            blocks = ["model." + b for b in stage_blocks(stage_depths, double_blocks, int(pattern[6:]))]
            found = {n for n in names if _in_blocks(n, blocks)}
        else:
            found = {n for n in names if fnmatchcase(n, pattern)}
        if not found:
            raise ConfigError("trainer.trainable", f"{pattern!r} selects no parameter (names look like "
                                                   f"{sorted(names)[0]!r})")  # fmt: skip
        chosen |= found
    return chosen


def lora_target_modules(linear_names: list[str], targets: list[str], stages: list[int] | None,
                        stage_depths: list[int], double_blocks: int) -> list[str]:  # fmt: skip
    """The names (inside the MM-DiT, e.g. "double_blocks.0.img_attn.qkv") of the linear layers that carry
    adapters: those a `targets` pattern matches, inside the blocks of `stages` when given. Nothing matched is a
    ConfigError naming finetune.lora.targets."""
    blocks = None
    if stages is not None:
        blocks = [b for k in stages for b in stage_blocks(stage_depths, double_blocks, k)]
    chosen = [n for n in linear_names if any(fnmatchcase(n, t) for t in targets)
              and (blocks is None or _in_blocks(n, blocks))]  # fmt: skip
    if not chosen:
        where = f" inside the blocks of stages {stages}" if stages is not None else ""
        raise ConfigError("finetune.lora.targets", f"{targets} match no linear layer of the model{where}")
    return chosen
