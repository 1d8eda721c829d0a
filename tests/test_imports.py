"""Every module imports on its own, and no two modules import each other (issue 15's acceptance).

A cycle works today only for as long as nobody reorders two import lines; a module that imports only after a sibling
did fails on a device where that sibling is not loaded first. So (a) each module is imported alone in a fresh
interpreter, and (b) the static import graph (every ``import`` statement, at module level or inside a function; only
imports for type hints, under ``if TYPE_CHECKING:``, are left out) must have no cycle, and no import may run up a layer
(the product into the development harness, the gateway into gatewayctl).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "devkit", "simulator", "components")
# No import runs up a layer: (importers, except these, must not import). Devices get neither devkit/ nor tests/;
# gatewayctl (gateway/cli) sits on top of the gateway, never under it.
LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("gateway", "", ("devkit", "tests")),
    ("components", "", ("devkit", "tests", "gateway.cli")),
    ("gateway", "gateway.cli", ("gateway.cli",)),
)


def module_files(packages: tuple[str, ...] = PACKAGES, root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the given packages."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _statements(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:`` (type hints only: never imported at run
    time, so no cycle; mypy fails on a run-time use of such a name)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``path`` (module ``name``) imports anywhere in its body, at module level or
    inside a function, except for type hints only.

    ``from a.b import c`` names module ``a.b.c`` when that is a module, else ``a.b``; a relative import is resolved
    against the module's own package.
    """
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def import_graph(packages: tuple[str, ...] = PACKAGES, root: Path = ROOT) -> dict[str, set[str]]:
    known = module_files(packages, root)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph has ~130 nodes, recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_loop_in(graph, set(c), c[0]) for c in sorted(components)]


def _loop_in(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself inside ``component`` (breadth first)."""
    paths = {w: [start, w] for w in sorted(graph[start] & component)}
    frontier = list(paths)
    while start not in paths:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return paths[start]


def _file(module: str, known: dict[str, Path]) -> str:
    return str(known[module].relative_to(ROOT))


def test_no_import_cycles() -> None:
    known = module_files()
    found = cycles(import_graph())
    assert not found, "import cycles (break each by moving the shared names into the lower module):\n" + "\n".join(
        " -> ".join(_file(m, known) for m in loop) for loop in found)


def _within(module: str, package: str) -> bool:
    return bool(package) and (module == package or module.startswith(f"{package}."))


def test_no_import_runs_up_a_layer() -> None:
    known = module_files()
    graph = import_graph()
    wrong = [f"{_file(m, known)} imports {target}" for m in sorted(graph) for who, but, banned in LAYERS
             if _within(m, who) and not _within(m, but)
             for target in sorted(graph[m]) if any(_within(target, b) for b in banned)]
    assert not wrong, "imports that run up a layer:\n" + "\n".join(wrong)


def test_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    # The finder itself must be able to fail: a three-module loop through a function-level and a relative import.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import a\n")
    # a type hint's import is no cycle: e imports f only for its annotations, f imports e to run it
    (pkg / "e.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import f\n")
    (pkg / "f.py").write_text("def f():\n    import pkg.e\n")
    assert cycles(import_graph(("pkg",), tmp_path)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def _import_alone(module: str) -> str:
    """'' if ``module`` imports in a fresh interpreter, else its error."""
    try:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    except subprocess.TimeoutExpired:
        return "did not finish importing within 60 s"
    if done.returncode == 0:
        return ""
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


def test_every_module_imports_alone() -> None:
    modules = sorted(m for m in module_files() if not m.endswith("__main__"))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        errors = dict(zip(modules, pool.map(_import_alone, modules), strict=True))
    failed = [f"{m}: {e}" for m, e in errors.items() if e]
    assert not failed, "modules that do not import in a fresh interpreter:\n" + "\n".join(failed)
