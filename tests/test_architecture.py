"""The layers hold: placer.core imports neither solvers nor the application; solvers import placer.core only;
the project's own modules are imported at the top of the modules of both, never inside functions.

In the application an import inside a function is an exception that says why: a heavy or optional
third-party module (``HEAVY``), or a ``# lazy:`` reason on the import's line or on a comment line above it in
the same function (the command modules defer the implementation of their command, which loads numba,
OR-Tools, pyarrow or torch, so that ``moeplace --help`` starts fast; see docs/architecture.md).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


# Third-party modules that may be imported inside a function without a comment: slow to import (seconds for
# torch), or optional (Dask is the extra moeplace[dask]; vLLM is there only inside vLLM).
HEAVY = ("torch", "transformers", "safetensors.torch", "matplotlib", "networkx", "pandas", "dask", "distributed",
         "vllm", "ortools", "pulp", "highspy", "scipy")


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


def _function_imports(path: Path) -> list[tuple[str, int, int, ast.AST]]:
    """(module, first line, last line, enclosing function) of every import inside a function, type-checking
    imports left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    out = []

    def visit(node, fn):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and fn is not None and id(child) not in typing_only:
                for name in ([child.module or ""] if isinstance(child, ast.ImportFrom) else [a.name for a in child.names]):
                    out.append((name, child.lineno, child.end_lineno, fn))
            visit(child, child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn)

    visit(tree, None)
    return out


def _has_reason(lines: list[str], first: int, last: int, fn: ast.AST) -> bool:
    """A ``lazy:`` comment on the import's lines, or on a comment line above it in the same function."""
    if any("# lazy:" in lines[i - 1] for i in range(first, last + 1)):
        return True
    return any(lines[i - 1].strip().startswith("# lazy:") for i in range(fn.lineno, first))


@pytest.mark.parametrize("path", _modules("placer"), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_inside_functions_say_why(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    for name, first, last, fn in _function_imports(path):
        heavy = any(name == h or name.startswith(h + ".") for h in HEAVY)
        assert heavy or _has_reason(lines, first, last, fn), (
            f"{path.relative_to(ROOT)}:{first} imports {name} inside {fn.name}() without a reason: import it at "
            f"the top of the module, or say why not in a '# lazy: ...' comment")


def test_the_reason_check_sees_a_missing_reason(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    import json\n\n\ndef g():\n    # lazy: a reason\n    import json\n"
                   "    import torch\n")
    found = [(name, fn.name, _has_reason(src.read_text().splitlines(), a, b, fn))
             for name, a, b, fn in _function_imports(src)]
    assert found == [("json", "f", False), ("json", "g", True), ("torch", "g", True)]


def test_the_command_line_loads_no_heavy_module_for_help():
    """``moeplace --help`` imports every command module; what their commands need is deferred (docs/architecture.md
    gives the times), so none of these is loaded."""
    heavy = HEAVY + ("numba", "pyarrow", "jsonschema", "solvers")
    code = ("import sys, placer.cli.main; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]", f"importing the command line loads {out.strip()}"


def test_every_per_mode_table_has_every_traffic_mode():
    """A traffic mode is data in ``TRAFFIC_MODELS`` and one entry in each table of per-mode code
    (docs/architecture.md, "A traffic mode"): a new ``TrafficMode`` member missing from one fails here."""
    from placer.core import cost
    from placer.core.mode import TRAFFIC_MODELS, TrafficMode
    from placer.core.objective import TRAFFIC_QUANTITIES
    from placer.replay import plan
    from solvers import assignment, instance

    tables = {"TRAFFIC_MODELS": TRAFFIC_MODELS, "TRAFFIC_QUANTITIES": TRAFFIC_QUANTITIES,
              "cost._LAYER_COUNTS": cost._LAYER_COUNTS, "cost._TOTAL_COUNTS": cost._TOTAL_COUNTS,
              "cost._JSON_FIELDS": cost._JSON_FIELDS, "instance._TRAFFIC_COUNTS": instance._TRAFFIC_COUNTS,
              "assignment.TRAFFIC_TERMS": assignment.TRAFFIC_TERMS, "plan._ROUTES": plan._ROUTES}
    for name, table in tables.items():
        assert set(table) == set(TrafficMode), f"{name} has {sorted(table)}, not every TrafficMode"
