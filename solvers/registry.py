"""The solver registry: one registration per solver, carrying what the command line needs.

Add a solver: write ``solvers/<name>.py`` with a function ``solve(problem, options) -> Placement`` decorated with
``@solver("<name>", summary=..., params=(...), ...)``. Every module of this package is imported when the registry
loads, so the new solver appears in ``SOLVER_NAMES``, in ``moeplace solve --solver`` and its parameters in the
command line's checks, with no other list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from placer.core.placement import Placement
from solvers.problem import PlacementProblem, SolveOptions
from solvers.robust import Scenarios, scenario_figures
from solvers.warmup import warm_up

SolveFn = Callable[[PlacementProblem, SolveOptions], Placement]
RobustFn = Callable[[Scenarios, SolveOptions], Placement]


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver; call it like its solve function, ``spec(problem, options)``.

    summary: one line for ``--help`` and the docs.
    params: the ``SolveOptions.params`` it takes; any other is refused (``ValueError`` naming it).
    token_paths: its objective is exact on the traces' token paths, which ``solve`` then reads token by token.
    affinity: it needs co-activation / transition counts or token paths (load-only input is refused).
    copies: it places redundant copies of hot experts (``--redundant`` > 0).
    warm_start: a fast baseline the optimising solvers may start from, in this order (lower first; among starts
        of equal objective the first wins), or None.
    robust: its solve of several scenarios at once (``solvers/robust.py``); without one, ``solve_scenarios`` gives
        it the scenarios' sum.
    compiled: it searches with numba kernels, compiled (or loaded from numba's cache) on a tiny problem before
        its first solve in a process, so that the compilation does not eat its time limit (``solvers/warmup.py``).
    """

    name: str
    solve: SolveFn
    summary: str
    params: tuple[str, ...] = ()
    token_paths: bool = False
    affinity: bool = False
    copies: bool = True
    warm_start: int | None = None
    robust: RobustFn | None = None
    compiled: bool = False

    def __call__(self, problem: PlacementProblem, options: SolveOptions | None = None) -> Placement:
        options = SolveOptions() if options is None else options
        self.check(problem, options)
        self.compile(problem.mode)
        return self.solve(problem, options)

    def compile(self, mode: str, robust: bool = False) -> None:
        """Compile (or load) the solver's numba kernels for ``mode`` (and its robust solve) in this process, if
        it has any and has not yet (``solvers/warmup.py``); a benchmark calls it before it starts timing."""
        if not self.compiled:
            return
        if robust and self.robust is not None:
            warm_up(self.name, mode, True, lambda ps, o: self.robust(Scenarios(tuple(ps), ("a", "b"), (1.0, 1.0)), o))
        elif not robust:
            warm_up(self.name, mode, False, lambda ps, o: self.solve(ps[0], o))

    def check(self, problem: PlacementProblem, options: SolveOptions) -> None:
        """ValueError naming the value if the solver cannot take ``options`` or ``problem``."""
        unknown = sorted(set(options.params) - set(self.params))
        if unknown:
            takes = ", ".join(self.params) or "none"
            raise ValueError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}; it takes: {takes}")
        if problem.num_redundant and not self.copies:
            raise ValueError(f"{self.name} places each expert once; redundant ({problem.num_redundant}) must be 0 "
                             f"(solvers that place copies: {', '.join(s.name for s in specs() if s.copies)})")
        if self.affinity and problem.paths_TLK is None and problem.trans_LEE is None and problem.num_layers > 1:
            raise ValueError(f"{self.name} needs transition counts (a trace or a full statistics file), not expert "
                             f"loads only")

    def solve_scenarios(self, scn: Scenarios, options: SolveOptions | None = None) -> Placement:
        """A placement for every scenario: the solver's robust solve, or its solve of the scenarios' sum; either
        way reported on every scenario (``report.extra["scenarios"]``)."""
        options = SolveOptions() if options is None else options
        if self.robust is not None:
            for problem in scn.problems:
                self.check(problem, options)
            self.compile(scn.first.mode, robust=True)
            return self.robust(scn, options)
        placement = self(scn.summed(), options)
        extra = {**placement.report.extra, "scenarios": scenario_figures(scn, options, placement)}
        return placement.with_(report=placement.report.with_(extra=extra))


_REGISTRY: dict[str, SolverSpec] = {}


def solver(name: str, **spec: object) -> Callable[[SolveFn], SolveFn]:
    """Register the decorated ``solve(problem, options)`` under ``name`` (``SolverSpec``'s other fields in ``spec``)."""
    def deco(fn: SolveFn) -> SolveFn:
        if name in _REGISTRY and _REGISTRY[name].solve is not fn:
            raise AssertionError(f"solver {name!r} registered twice")
        _REGISTRY[name] = SolverSpec(name, fn, **spec)  # type: ignore[arg-type]
        return fn

    return deco


def specs() -> list[SolverSpec]:
    """Every registered solver, by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def warm_starts() -> list[SolverSpec]:
    """The solvers the optimising ones may start from, in their ``warm_start`` order."""
    return sorted((s for s in _REGISTRY.values() if s.warm_start is not None), key=lambda s: s.warm_start)


def get_solver(name: str) -> SolverSpec:
    """The solver registered under ``name`` (ValueError listing the choices otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _load_all() -> None:
    """Import every module of the package, so that each registers its solvers."""
    package = importlib.import_module("solvers")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"solvers.{info.name}")


_load_all()
SOLVER_NAMES: tuple[str, ...] = tuple(sorted(_REGISTRY))
