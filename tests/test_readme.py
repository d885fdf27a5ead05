"""The README's library example runs as written."""

from __future__ import annotations

import re

from .helpers import REPO


def test_readme_python_example_runs():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README lost its python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["image"].shape == (1, 3, 32, 32)
    assert namespace["loss"].item() > 0
