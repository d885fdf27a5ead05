"""Imports run one way (DESIGN section 2): cli, ablate, perf -> lit, data_modules -> parts -> models, bridges -> flow ->
config. Every import statement of the kit is read, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO

# nami.text_embedding: the one type the data side and the models share (a leaf: it imports torch alone)
LOWER = ("nami.config", "nami.errors", "nami.registry", "nami.text_embedding")
# package -> the kit packages it may import (besides itself)
ALLOWED = {
    "nami.errors": (),
    "nami.text_embedding": (),
    "nami.registry": ("nami.errors",),
    "nami.config": ("nami.errors", "nami.registry"),
    "nami.flow": LOWER,
    "nami.models": LOWER,
    "nami.eval": LOWER,
    "nami.bridges": (*LOWER, "nami.flow"),
    "nami.parts": (*LOWER, "nami.flow", "nami.bridges", "nami.models"),
    "data_modules": (*LOWER, "nami.flow", "nami.eval"),
    "nami.lit": (*LOWER, "nami.flow", "nami.bridges", "nami.models", "nami.eval", "nami.parts", "data_modules"),
    "nami.perf": (*LOWER, "nami.flow", "nami.bridges", "nami.models", "nami.eval", "nami.parts", "nami.lit",
                  "data_modules"),
    "nami.ablate": (*LOWER, "nami.flow", "nami.bridges", "nami.models", "nami.eval", "nami.parts", "nami.lit",
                    "nami.perf", "data_modules"),
    "nami.cli": (*LOWER, "nami.flow", "nami.bridges", "nami.models", "nami.eval", "nami.parts", "nami.lit",
                 "nami.perf", "nami.ablate", "data_modules"),
    "nami": ("nami.config", "nami.errors", "nami.lit"),  # the package's facade: nami.NamiPipeline, imported lazily
}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "data_modules":
        return "data_modules"
    if parts[0] != "nami":
        return None
    return ".".join(parts[:2]) if len(parts) > 1 else "nami"


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO / "src") if "src" in path.parts else path.relative_to(REPO)
    names = list(rel.with_suffix("").parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def _imports(path: Path) -> list[tuple[int, str]]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]  # a name may be a module
    return out


def test_no_import_runs_up_the_layers():
    files = sorted((REPO / "src" / "nami").rglob("*.py")) + sorted((REPO / "data_modules").rglob("*.py"))
    assert len(files) > 40
    wrong = []
    for path in files:
        own = _package(_module_name(path))
        for line, target in _imports(path):
            other = _package(target)
            if other is None or other == own:
                continue
            if other not in ALLOWED[own]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({own}) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_relative_and_nested_imports():
    """The walk resolves `from ..x import y` and finds imports inside functions."""
    path = REPO / "src" / "nami" / "lit" / "runner.py"
    packages = {_package(t) for _, t in _imports(path)}
    assert "nami.parts" in packages and "data_modules" in packages  # the latter only inside a function
