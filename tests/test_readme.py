"""The README's library example runs as written and computes what `nami train` and `nami sample` compute."""

from __future__ import annotations

import re

import torch

from .helpers import REPO


def _example() -> dict:
    text = (REPO / "README.md").read_text()
    # the library example (other python blocks, e.g. NamiPipeline's, need a trained run)
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "build_parts" in b]
    assert blocks, "README lost its python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    return namespace


def test_readme_loss_is_the_training_step_loss():
    from data_modules.collate import StageBatch
    from nami.lit.joint_flow import JointFlowModule

    ns = _example()
    cfg, parts, flow = ns["cfg"], ns["parts"], ns["flow"]
    assert ns["loss"].item() > 0
    k_all = list(range(flow.num_stages))
    images = [flow.stage_latents(ns["images"][2 * k : 2 * k + 2], k) for k in k_all]
    captions = [ns["captions"][2 * k : 2 * k + 2] for k in k_all]
    batch = StageBatch(images, captions, captions, [[{}, {}]] * 3, [[0, 0]] * 3, k_all, 0, [1.0] * 3, True)
    module = JointFlowModule(cfg, parts)  # global step 0, rank 0: the generators the example used
    assert torch.equal(module.stage_losses(batch).total, ns["loss"])


def test_readme_sample_is_the_pipeline_sample():
    from nami.sampling.pipeline import Pipeline

    ns = _example()
    cfg = ns["cfg"]
    assert ns["image"].shape == (1, 3, 32, 32)
    pipeline = Pipeline.from_config(ns["parts"], cfg)
    images = pipeline.sample(ns["prompts"], cfg.sampler.steps, cfg.sampler.guidance, seed=0).images
    assert torch.equal(images, ns["image"])


def test_the_architecture_lives_in_the_repository():
    """The README links the repository's own architecture document, never a file outside the repository
    (issue 21, bug 6: a link to ../shared/DESIGN.md is broken in any clone)."""
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)", text)
    local = [t for t in targets if "://" not in t]
    assert "docs/architecture.md" in local
    for target in local:
        path = (REPO / target).resolve()
        assert path.is_relative_to(REPO) and path.exists(), target
    assert "../shared" not in text
    architecture = (REPO / "docs" / "architecture.md").read_text()
    for must in ("sigma = 1 is pure noise", "velocity", "weights_source", "RunDir", "model.safetensors"):
        assert must in architecture, must


def test_the_layout_lists_every_package_of_the_kit():
    """The README's layout block names every package and top-level module under src/nami and data_modules."""
    text = (REPO / "README.md").read_text()
    layout = text.split("## Layout", 1)[1].split("```", 2)[1]
    src = REPO / "src" / "nami"
    names = [f"src/nami/{p.name}/" for p in src.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    names += [f"src/nami/{p.name}" for p in src.glob("*.py") if p.name not in ("__init__.py", "errors.py")]
    missing = [name for name in names if name not in layout]
    assert not missing, missing
    assert "data_modules/" in layout and "docs/architecture.md" in layout
