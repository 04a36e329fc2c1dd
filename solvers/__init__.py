"""Placement solvers: one file per formulation, pure functions on arrays, and a registry.

``solvers.registry.get_solver(name)`` returns ``solve(problem, options) -> Placement``.
"""

from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import SOLVER_NAMES, SolverName, get_solver

__all__ = ["PlacementProblem", "SolveOptions", "SOLVER_NAMES", "SolverName", "get_solver"]
