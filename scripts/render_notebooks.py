"""`make notebooks`: run every notebook in place, so that it is committed with its outputs and reads on a
code-hosting page without running anything.

    .venv/bin/python scripts/render_notebooks.py [NOTEBOOK ...] [--max-width 800] [--colours 64] [--timeout 600]

Notebooks 01 and 02 read NAMI_CONFIG, NAMI_RUN and NAMI_OVERRIDES (default: experiments/tiny.yaml and runs/tiny,
the run `make demo` trains); 03 reads NAMI_ABLATION (default runs/ablate, `make ablate`) and is left as it is,
with a message, when that holds no results.csv. Each runs in a fresh kernel of this interpreter with notebooks/
as its working directory, as Jupyter starts it; a notebook is written only once every cell ran. Outputs are
kept small: figures shrunk to --max-width pixels and stored with a --colours palette where smaller, stderr
dropped, execution counts renumbered from 1, no timing metadata, and a warning above SIZE_WARNING bytes.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SIZE_WARNING = 200_000


def inputs_missing(path: Path) -> str | None:
    """Why a notebook cannot run here (its inputs are absent), else None."""
    if "03_ablation" in path.name:
        ablation = Path(os.environ.get("NAMI_ABLATION", REPO / "runs" / "ablate"))
        if not (ablation / "results.csv").is_file():
            return f"no {ablation}/results.csv (make ablate, or set NAMI_ABLATION)"
    return None


def small_png(data: str, max_width: int, colours: int) -> str:
    """A base64 PNG shrunk to `max_width` and, when smaller, reduced to a palette of `colours`."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    candidates = []
    for variant in (image.convert("RGB"), image.convert("RGB").quantize(colours, dither=Image.Dither.NONE)):
        buffer = io.BytesIO()
        variant.save(buffer, format="PNG", optimize=True)
        candidates.append(buffer.getvalue())
    return base64.b64encode(min(candidates, key=len)).decode()


def tidy(nb, max_width: int, colours: int) -> None:
    """Small figures, execution counts 1..n, no per-cell timing, no stderr (library warnings and progress bars
    of this machine, with its paths; what a notebook means to show it prints or displays)."""
    count = 0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = count
            data = output.get("data", {})
            if "image/png" in data:
                data["image/png"] = small_png(data["image/png"], max_width, colours)


def render(path: Path, max_width: int, colours: int, timeout: int) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    # `python3` is this interpreter's own kernel (ipykernel installed in the same environment)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})  # fmt: skip
    client.execute()  # raises CellExecutionError naming the cell; nothing is written then
    tidy(nb, max_width, colours)
    nbformat.write(nb, path)
    size = path.stat().st_size
    note = f"  (over {SIZE_WARNING // 1000} KB: lower --max-width)" if size > SIZE_WARNING else ""
    print(f"{path.relative_to(REPO)}: ran in {time.perf_counter() - start:.0f}s, {size / 1000:.0f} KB{note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--max-width", type=int, default=800, help="figure width in pixels at most")
    parser.add_argument("--colours", type=int, default=64, help="palette size of the stored figures")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    for path in args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")):
        path = path.resolve()
        missing = inputs_missing(path)
        if missing:
            print(f"skipping {path.relative_to(REPO)}: {missing}; left as it is")
            continue
        render(path, args.max_width, args.colours, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
