"""PuLP plumbing shared by the MILP formulations (``moetuner``, ``exflow``): the backend (CBC bundled with
PuLP, or HiGHS through ``highspy``), time limit, threads, seed, warm start, and the status, objective and
bound of a solve."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from placer.core.errors import MoeplaceError
from placer.core.objective import Objective, Quantity
from placer.core.placement import Placement, SolveStatus
from solvers.assignment import project_terms
from solvers.bounds import gap_of
from solvers.problem import PlacementProblem, SolveOptions

BACKENDS = ("cbc", "highs")
# What still works when a backend is missing (for the error message).
_STILL_WORKING = "auto, cpsat and the baselines (contiguous, round_robin, random, greedy, eplb)"


class BackendMissing(MoeplaceError):
    """A MILP backend (or PuLP itself) is not installed."""


def backend_of(solver: str, params: dict[str, Any]) -> str:
    b = params.get("backend", "cbc")
    if b not in BACKENDS:
        raise ValueError(f"{solver}: backend {b!r} is not one of {', '.join(BACKENDS)}")
    return b


def require(solver: str, backend: str) -> None:
    """BackendMissing naming the package to install and the solvers that still work."""
    try:
        import pulp  # noqa: F401
    except ImportError:
        raise BackendMissing(f"{solver} needs the Python package pulp (pip install pulp); solvers that still "
                             f"work: {_STILL_WORKING}") from None
    if backend == "highs":
        try:
            import highspy  # noqa: F401
        except ImportError:
            raise BackendMissing(f"{solver} --backend highs needs the Python package highspy (pip install "
                                 f"highspy); still working: {solver} --backend cbc, {_STILL_WORKING}") from None
    else:
        import pulp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ok = pulp.PULP_CBC_CMD(msg=False).available()
        if not ok:
            raise BackendMissing(f"{solver} --backend cbc needs the CBC binary bundled with pulp (reinstall "
                                 f"pulp); still working: {solver} --backend highs, {_STILL_WORKING}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what native solvers print on stdout (HiGHS prints a banner even when asked not to), so that
    the command line's own output (JSON) stays clean."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)


@dataclass
class MilpResult:
    status: str            # OPTIMAL (proven), FEASIBLE (stopped with a solution), NONE
    objective: float | None
    bound: float | None    # a proven lower bound (minimisation), when the backend reports one


def solve(prob: Any, backend: str, time_limit_s: float, threads: int, seed: int, warm: bool = False) -> MilpResult:
    """Solve a PuLP minimisation problem; variables hold the solution afterwards."""
    import pulp

    threads = threads or 1
    if backend == "highs":
        solver = _HighsWarm(msg=False, timeLimit=max(time_limit_s, 0.01), threads=threads, random_seed=seed,
                            warm=warm)
    else:
        with warnings.catch_warnings():  # PuLP 3 announces CBC's move to an extra; the bundled binary works
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(time_limit_s, 0.01), threads=threads,
                                       warmStart=warm,
                                       options=[f"randomSeed {seed + 1}", f"randomCbcSeed {seed + 1}"])
    with quiet():
        prob.solve(solver)
    sol = prob.sol_status
    if sol == pulp.LpSolutionOptimal:
        status = "OPTIMAL"
    elif sol == pulp.LpSolutionIntegerFeasible:
        status = "FEASIBLE"
    else:
        status = "NONE"
    obj = pulp.value(prob.objective) if status != "NONE" else None
    bound = None
    if status == "OPTIMAL":
        bound = obj
    elif backend == "highs" and status == "FEASIBLE":
        try:
            bound = float(prob.solverModel.getInfo().mip_dual_bound)
        except Exception:  # noqa: BLE001 - a backend without the figure just has no bound
            bound = None
    return MilpResult(status, obj, bound)


def _highs_class() -> Any:
    import pulp

    class HighsWarm(pulp.HiGHS):
        """PuLP's HiGHS (highspy) with a warm start from the variables' current values."""

        def __init__(self, warm: bool = False, **kw: Any) -> None:
            super().__init__(**kw)
            self.warm = warm

        def callSolver(self, lp: Any) -> None:
            if self.warm:
                import highspy

                values = [v.varValue if v.varValue is not None else 0.0 for v in lp.variables()]
                s = highspy.HighsSolution()
                s.col_value = values
                s.value_valid = True
                lp.solverModel.setSolution(s)
            lp.solverModel.run()

    return HighsWarm


def _HighsWarm(**kw: Any) -> Any:  # noqa: N802 - a factory that reads like the class it builds
    return _highs_class()(**kw)


def placement_of(problem: PlacementProblem, options: SolveOptions, gpu_LE: np.ndarray, solver: str, start: float,
                 proven: bool, objective: Quantity, value: float, bound: float | None, extra: dict) -> Placement:
    """The ``Placement`` of a MILP solver's expert-to-GPU assignment ``gpu_LE`` (one copy per expert): status,
    bound and gap of its own ``objective``, and the project objective of the layout in ``extra["cost"]``."""
    L, E = gpu_LE.shape
    expert = np.broadcast_to(np.arange(E), (L, E))
    layout = problem.placement(gpu_LE, expert, problem.report(solver, start))
    extra.update(project_terms(problem, options, layout))
    if proven:
        bound, gap = value, 0.0
    else:
        gap = None if bound is None else gap_of(value, bound)
    report = problem.report(solver, start, status=SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE,
                            objective=Objective.of(objective), objective_value=value, bound=bound, gap=gap,
                            extra=extra)
    return layout.with_(report=report)
