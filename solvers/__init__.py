"""Placement solvers: one file per formulation, built on ``placer.core`` only, and one registry.

``get_solver(name)`` returns the registered ``SolverSpec``; call it as ``spec(problem, options) -> Placement``.
Solvers take arrays and dataclasses and return a ``Placement`` with its ``SolveReport``: no files, no printing.
"""

from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import SOLVER_NAMES, SolverSpec, get_solver, specs

__all__ = ["PlacementProblem", "SolveOptions", "SOLVER_NAMES", "SolverSpec", "get_solver", "specs"]
