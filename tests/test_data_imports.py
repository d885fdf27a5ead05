"""`data_modules` has no import circle: every import statement of every module (those inside functions
included) is an edge, and the graph over the package's modules is acyclic."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO

PACKAGE = "data_modules"


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the module at `path`, `root` being the directory on sys.path that holds it."""
    names = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def imported_modules(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that `path` imports anywhere in its body. `from X import y` is an edge to the
    module `X.y` when that is one (a submodule), else to `X`; a relative import is resolved first."""
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]  # fmt: skip
        else:
            continue
        found.update(t for t in targets if t in modules and t != own)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    root, paths = package.parent, sorted(package.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imported_modules(p, root, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that starts and ends at the same module, or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def test_data_modules_has_no_import_circle():
    graph = import_graph(REPO / PACKAGE)
    assert len(graph) > 15 and "data_modules.formats.webdataset" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)
    assert graph["data_modules.records"] == set()  # the shared records: a leaf every stage may import


def test_the_check_sees_circles_through_function_level_imports(tmp_path):
    """The walk finds an import inside a function, resolves relative and absolute imports, reports the circle."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from .. import a\n    return a\n")
    (package / "c.py").write_text("import os\nfrom data_modules.a import thing\n")
    graph = import_graph(package)
    assert graph["data_modules.sub.b"] == {"data_modules.a"} and graph["data_modules.c"] == {"data_modules.a"}
    assert graph["data_modules.a"] == {"data_modules.sub.b"}
    assert find_cycle(graph) == ["data_modules.a", "data_modules.sub.b", "data_modules.a"]
    (package / "sub" / "b.py").write_text("def thing():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None
