"""The layers hold: placer.core imports neither solvers nor the application; solvers import placer.core only;
the project's own modules are imported at the top of the modules of both, never inside functions.

(The command modules of ``placer.cli`` import their implementation inside the command function, so that
``moeplace --help`` does not load numba, OR-Tools and torch; see ``placer/cli/__init__.py``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function or class) for every import of the file; imports for type checking
    only (under ``if TYPE_CHECKING:``) are not imports at run time and are left out."""
    out = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            out.append((name, node.col_offset > 0))
    return out


def _project(name: str) -> bool:
    return name.split(".")[0] in ("placer", "solvers")


@pytest.mark.parametrize("path", _modules("placer/core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_only_the_core(path):
    for name, _ in _imports(path):
        if _project(name):
            assert name.startswith("placer.core"), f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize("path", _modules("solvers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_solvers_build_on_the_core_only(path):
    for name, _ in _imports(path):
        if _project(name):
            assert name.startswith(("placer.core", "solvers")), f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize("path", _modules("placer/core") + _modules("solvers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_project_imports_are_at_the_top(path):
    for name, inside in _imports(path):
        assert not (_project(name) and inside), f"{path.relative_to(ROOT)} imports {name} inside a function"
