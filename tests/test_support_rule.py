"""Test modules import shared helpers only from ``tests.support`` (see its docstring), never from each other.

A helper imported from another test module drags that module's tests, fixtures and import-time side effects along,
and breaks when the module is renamed or its helper is changed for its own tests; a conftest is pytest's to load,
not an importable library. This test walks every Python file under tests/ and bench/ with ``ast`` and fails naming
each import that reaches into a test module or a conftest.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from devkit.peers import ROOT

ALLOWED = ("tests.support",)
WALKED = ("tests", "bench")


def allowed(module: str) -> bool:
    """Whether ``module`` (dotted, absolute) may be imported by a test: anything outside tests/, or a helper module."""
    top = module.split(".")[0]
    if top == "tests":
        return any(module == a or module.startswith(a + ".") for a in ALLOWED)
    return top != "conftest" and not top.startswith("test_")  # a test module reached through sys.path


def _package(path: Path, root: Path) -> list[str]:
    """The dotted package holding ``path`` (relative to ``root``), for resolving relative imports."""
    return list(path.relative_to(root).parent.parts)


def imported(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every module ``path`` imports, ``from a import b`` also yielding ``a.b``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(path, root)
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if allowed(module) or not (root / Path(*module.split("."))).is_dir():
                yield node.lineno, module
            else:  # ``from tests import conftest``: the names are the modules imported
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"


def violations(root: Path, folders: tuple[str, ...] = WALKED) -> list[str]:
    """``file:line imports module`` for every forbidden import under ``root / folder``."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            for line, module in imported(path, root):
                if not allowed(module):
                    found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    found = violations(ROOT)
    assert not found, ("move the helper into tests/support/<topic>.py (fixtures stay in a conftest.py) and import "
                       "it from there:\n" + "\n".join(found))


def test_the_rule_finds_each_forbidden_form_and_allows_the_helpers(tmp_path: Path) -> None:
    (tmp_path / "tests" / "support").mkdir(parents=True)
    (tmp_path / "tests" / "sub").mkdir()
    (tmp_path / "tests" / "sub" / "test_b.py").write_text(
        "from tests.test_a import helper\n"
        "from tests.conftest import start\n"
        "import tests.sub.conftest\n"
        "from tests import test_a\n"
        "from .conftest import NS\n"
        "from . import test_c\n"
        "from test_a import helper\n"
        "from tests.support.peers import conn\n"
        "from tests.support import peers\n"
        "import tests.support.peers\n"
        "from devkit.peers import free_port, wait_for\n"
        "from gateway.record import Record\n"
    )
    assert violations(tmp_path, ("tests",)) == [
        "tests/sub/test_b.py:1 imports tests.test_a",
        "tests/sub/test_b.py:2 imports tests.conftest",
        "tests/sub/test_b.py:3 imports tests.sub.conftest",
        "tests/sub/test_b.py:4 imports tests.test_a",
        "tests/sub/test_b.py:5 imports tests.sub.conftest",
        "tests/sub/test_b.py:6 imports tests.sub.test_c",
        "tests/sub/test_b.py:7 imports test_a",
    ]
