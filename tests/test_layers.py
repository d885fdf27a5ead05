"""Imports run one way: cli -> ablate -> perf -> lit -> sampling / data_modules -> parts -> artifacts -> models,
bridges -> flow -> config; no module imports itself through others; every module of `nami.lit` is there because
it uses Lightning. Every import statement of the kit is read, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO

# nami.text_embedding: the one type the data side and the models share (a leaf: it imports torch alone);
# nami.signals: how a stop signal is honoured (sampling loops, training and the CLI ask it)
LOWER = ("nami.config", "nami.errors", "nami.registry", "nami.text_embedding", "nami.signals")
MATH = (*LOWER, "nami.flow", "nami.bridges", "nami.models")
# package -> the kit packages it may import (besides itself)
ALLOWED = {
    "nami.errors": (),
    "nami.text_embedding": (),
    "nami.signals": ("nami.errors",),
    "nami.registry": ("nami.errors",),
    "nami.config": ("nami.errors", "nami.registry"),
    "nami.flow": LOWER,
    "nami.models": LOWER,
    "nami.eval": LOWER,
    "nami.bridges": (*LOWER, "nami.flow"),
    "nami.artifacts": MATH,
    "nami.parts": (*MATH, "nami.artifacts"),
    "nami.sampling": (*MATH, "nami.artifacts", "nami.parts"),
    "data_modules": (*LOWER, "nami.flow", "nami.models", "nami.eval"),
    "nami.lit": (*MATH, "nami.eval", "nami.artifacts", "nami.parts", "nami.sampling", "data_modules"),
    "nami.perf": (*MATH, "nami.eval", "nami.artifacts", "nami.parts", "nami.sampling", "nami.lit", "data_modules"),
    "nami.ablate": (*MATH, "nami.eval", "nami.artifacts", "nami.parts", "nami.sampling", "nami.lit", "nami.perf",
                    "data_modules"),
    "nami.cli": (*MATH, "nami.eval", "nami.artifacts", "nami.parts", "nami.sampling", "nami.lit", "nami.perf",
                 "nami.ablate", "data_modules"),
    "nami": ("nami.config", "nami.errors", "nami.sampling"),  # the package's facade: nami.NamiPipeline, lazily
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


def _kit_files() -> list[Path]:
    return sorted((REPO / "src" / "nami").rglob("*.py")) + sorted((REPO / "data_modules").rglob("*.py"))


def _module_graph() -> dict[str, set[str]]:
    """module -> the kit modules it imports (an imported name that is a module counts as that module, any other
    name as its package)."""
    modules = {_module_name(p): p for p in _kit_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, target in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others():
    cycles = _cycles(_module_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_of_lit_uses_lightning():
    """`nami.lit` holds what needs Lightning; everything else lives in artifacts/, sampling/, eval/, flow/..."""
    without = []
    for path in sorted((REPO / "src" / "nami" / "lit").glob("*.py")):
        if path.name == "__init__.py":
            continue
        if not any(target.split(".")[0] == "lightning" for _, target in _imports(path)):
            without.append(path.name)
    assert not without, f"modules of nami.lit that never import Lightning: {without}"


def test_perf_and_cli_sample_without_lightning():
    """Sampling goes through nami.sampling: perf and cli reach nami.lit only to train (the runner, the training
    step bench), never for a pipeline."""
    for folder in ("perf", "cli"):
        for path in sorted((REPO / "src" / "nami" / folder).glob("*.py")):
            for line, target in _imports(path):
                if target.startswith("nami.lit"):
                    assert target.startswith(("nami.lit.runner", "nami.lit.joint_flow")), f"{path.name}:{line} {target}"
