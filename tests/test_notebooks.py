"""Every notebook in notebooks/ runs against a tiny run trained here, without error, and shows its figures.

Notebooks 01 and 02 read NAMI_CONFIG, NAMI_RUN and NAMI_OVERRIDES (a JSON list of key=value overrides) from
the environment; the fixture trains the tiny config for a few steps with the learned text encoder and points
them at it. Notebook 03 reads NAMI_ABLATION, the output of a tiny `nami ablate` (the session fixture
`tiny_ablation`, tests/ablation_fixtures.py, which test_ablate.py checks). Each notebook runs in a fresh kernel of this
interpreter with the notebooks/ folder as its working directory, as Jupyter would start it. The committed
notebooks carry the outputs `make notebooks` rendered (scripts/render_notebooks.py); execution here works on a
copy and starts from cleared outputs.
"""

from __future__ import annotations

import json
import os
import sys
import time

import nbformat
import pytest

from .helpers import EXPERIMENTS, LEARNED_TEXT, REPO

NOTEBOOKS = REPO / "notebooks"
# name -> (figures it promises: image/png outputs, Markdown tables it displays)
PROMISES = {
    "01_progressive_sampling.ipynb": (3, 0),
    "02_bridgeflow_alignment.ipynb": (3, 1),
    "03_ablation_comparison.ipynb": (4, 2),
}
RUN_PARAMETERS = ("NAMI_CONFIG", "NAMI_RUN", "NAMI_OVERRIDES")
PARAMETERS = {name: RUN_PARAMETERS for name in PROMISES}
PARAMETERS["03_ablation_comparison.ipynb"] = ("NAMI_ABLATION",)  # reads a `nami ablate` output, trains nothing
CELL_TIMEOUT_S = 300
MAX_SAVED_BYTES = 250_000  # a rendered notebook (scripts/render_notebooks.py warns above 200 KB)

# All of this module's tests share one trained run (and, with test_ablate.py, one ablation): one xdist worker.
pytestmark = pytest.mark.xdist_group("notebooks")


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_every_notebook_is_covered_and_saved_small_with_clean_outputs_or_none():
    """Committed as `make notebooks` renders them (every cell run, in order, no error, figures kept small) or,
    where their inputs were missing, without outputs."""
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(PROMISES)
    for name in PROMISES:
        nb = read(name)
        nbformat.validate(nb)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        rendered = any(cell.outputs for cell in code)
        if rendered:
            assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), name
            assert not outputs(nb, "error"), name
            assert (NOTEBOOKS / name).stat().st_size < MAX_SAVED_BYTES, f"{name}: make notebooks keeps it small"
        else:
            assert code and all(cell.execution_count is None for cell in code), name
        assert all(key in code[0].source for key in PARAMETERS[name]), f"{name}: parameters go in cell 1"
        explained = sum(cell.cell_type == "markdown" for cell in nb.cells)
        assert explained >= PROMISES[name][0], f"{name}: every figure needs its markdown cell"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Shards, fitted bridges and a tiny model trained for a few steps: (run directory, overrides)."""
    from data_modules.synth import write_shapes
    from nami.config import load
    from nami.lit.runner import pretrain_bridges, train

    root = tmp_path_factory.mktemp("notebook-run")
    write_shapes(root / "shapes", num=96, shards=2, resolution=32)
    overrides = [
        *LEARNED_TEXT, f"data.shards={root}/shapes/*.tar", "data.batch_size=6", "data.num_workers=0",
        f"trainer.default_root_dir={root}", "trainer.accelerator=cpu", "trainer.max_steps=3",
        "bridge.fit_batches=3", "bridge.heldout_batches=1", "log.sample_prompts=[a red circle]",
        "sampler.steps=[2,2,2]",
    ]  # fmt: skip
    cfg = load(EXPERIMENTS / "tiny.yaml", overrides)
    pretrain_bridges(cfg)
    run = train(cfg)
    assert (run / "weights.safetensors").is_file() and (run / "bridges.safetensors").is_file()
    return run, overrides


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernelspec that starts this very interpreter (a user-level `python3` spec could name another)."""
    from ipykernel.kernelspec import write_kernel_spec

    folder = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(folder / "nami-test", overrides={"display_name": "NAMI test kernel"})
    return folder


def execute(name: str, env: dict[str, str], kernel_dir) -> tuple[nbformat.NotebookNode, float]:
    """Run every cell (raises CellExecutionError naming the failing cell); returns the executed copy."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = read(name)
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    km = KernelManager(kernel_name="nami-test", kernel_spec_manager=specs)
    assert km.kernel_spec.argv[0] == sys.executable
    cwd = {"metadata": {"path": str(NOTEBOOKS)}}
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources=cwd)
    start = time.perf_counter()
    try:
        client.execute(env=env)
    finally:  # the client shuts down only kernels it started itself
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    return nb, time.perf_counter() - start


def outputs(nb: nbformat.NotebookNode, output_type: str | None = None) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
            if output_type is None or o.output_type == output_type]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROMISES))
def test_notebook_runs_and_shows_its_figures(name, request, kernel_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAMI_") and k != "MPLBACKEND"}
    env["OMP_NUM_THREADS"] = "1"  # the kernel shares 2 cores with pytest (and xdist's other worker)
    if "NAMI_ABLATION" in PARAMETERS[name]:
        run = request.getfixturevalue("tiny_ablation").out
        env["NAMI_ABLATION"] = str(run)
    else:
        run, overrides = request.getfixturevalue("tiny_run")
        env.update(
            NAMI_CONFIG="experiments/tiny.yaml",  # relative: the notebook resolves it against the repo root
            NAMI_RUN=str(run),
            NAMI_OVERRIDES=json.dumps(overrides),
        )
    saved = (NOTEBOOKS / name).read_bytes()
    nb, seconds = execute(name, env, kernel_dir)
    print(f"{name}: executed in {seconds:.1f}s")

    assert not outputs(nb, "error")
    figures, tables = PROMISES[name]
    images = [o for o in outputs(nb, "display_data") if "image/png" in o.data]
    assert len(images) >= figures, f"{name}: {len(images)} figures, promised {figures}"
    markdown = [o.data["text/markdown"] for o in outputs(nb, "display_data") if "text/markdown" in o.data]
    assert sum(text.startswith("|") and "|---" in text for text in markdown) >= tables
    printed = "".join(o.text for o in outputs(nb, "stream") if o.name == "stdout")
    assert str(run) in printed, f"{name} did not report reading the fixture's run (or ablation) {run}"
    # The saved notebook stays as committed: execution works on a copy.
    assert (NOTEBOOKS / name).read_bytes() == saved
