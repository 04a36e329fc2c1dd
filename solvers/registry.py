"""The solver registry, keyed by the ``SolverName`` literal.

Add a solver: write ``solvers/<name>.py`` with a ``@register("<name>")`` function
``solve(problem, options) -> Placement``, and add the name to ``SolverName`` and ``_MODULES``. At import
the registry checks that the literal, the modules and the registered functions agree, so the command
line's choices and the code cannot drift.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Literal, get_args

if TYPE_CHECKING:
    from placer.core.placement import Placement
    from solvers.problem import PlacementProblem, SolveOptions

SolverName = Literal["contiguous", "round_robin", "random", "greedy", "eplb", "cpsat", "auto", "moetuner", "exflow"]
SOLVER_NAMES: tuple[str, ...] = get_args(SolverName)

# Module of each solver (several names may share one module).
_MODULES: dict[str, str] = {
    "contiguous": "solvers.contiguous",
    "round_robin": "solvers.round_robin",
    "random": "solvers.random_layout",
    "greedy": "solvers.greedy",
    "eplb": "solvers.eplb",
    "cpsat": "solvers.cpsat",
    "auto": "solvers.auto",
    "moetuner": "solvers.moetuner",
    "exflow": "solvers.exflow",
}

SolverFn = Callable[["PlacementProblem", "SolveOptions"], "Placement"]
_REGISTRY: dict[str, SolverFn] = {}


def register(name: str) -> Callable[[SolverFn], SolverFn]:
    if name not in SOLVER_NAMES:
        raise AssertionError(f"solver {name!r} is not in SolverName {SOLVER_NAMES}")

    def deco(fn: SolverFn) -> SolverFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise AssertionError(f"solver {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def get_solver(name: str) -> SolverFn:
    """The solve function registered under ``name`` (ValueError listing the choices otherwise)."""
    if name not in SOLVER_NAMES:
        raise ValueError(f"unknown solver {name!r}; choose from {', '.join(SOLVER_NAMES)}")
    return _REGISTRY[name]


def _load_all() -> None:
    assert set(_MODULES) == set(SOLVER_NAMES), f"_MODULES {sorted(_MODULES)} != SolverName {sorted(SOLVER_NAMES)}"
    for module in sorted(set(_MODULES.values())):
        importlib.import_module(module)
    missing = set(SOLVER_NAMES) - set(_REGISTRY)
    assert not missing, f"solvers named but not registered: {sorted(missing)}"


_load_all()
