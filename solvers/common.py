"""Helpers the optimising solvers share: warm starts from the baselines, time budgets, CP-SAT settings."""

from __future__ import annotations

import time

import numpy as np

from solvers import registry
from solvers.assignment import feasible, gpu_from_placement, terms
from solvers.instance import Instance
from solvers.problem import PlacementProblem, SolveOptions

# CP-SAT's deterministic time per wall-clock second, measured on the project's 2-core reference machine
# (see docs/solvers.md): a --time-limit of T seconds becomes max_deterministic_time = T x this, so the same
# inputs, seed and limit give the same result on any machine; a wall-clock safety stop at
# WALL_SAFETY x T breaks that promise only when it fires, and the placement then says so.
DET_PER_SECOND = 0.75
WALL_SAFETY = 2.0


def starts(inst: Instance, problem: PlacementProblem) -> list[tuple[str, np.ndarray]]:
    """Feasible starting assignments: the LPT packing of items, then every registered warm-start baseline (in
    their order) whose copies match the instance's and whose loads stay within the cap. The registry is asked at call
    time: the solvers register as the package loads."""
    out = [("lpt", inst.start_gpu_LP.copy())]
    for spec in registry.warm_starts():
        try:
            placement = spec(problem, SolveOptions(time_limit_s=1.0))
        except ValueError:
            continue
        gpu = gpu_from_placement(inst, placement)
        if gpu is not None and feasible(inst, gpu):
            out.append((spec.name, gpu))
    return out


def best_start(inst: Instance, problem: PlacementProblem) -> tuple[str, np.ndarray, float]:
    """The feasible start with the lowest objective (ties: the first in ``starts`` order)."""
    best = None
    for name, gpu in starts(inst, problem):
        v = terms(inst, gpu).value
        if best is None or v < best[2] - 1e-9:
            best = (name, gpu, v)
    return best


def workers(options: SolveOptions) -> int:
    """CP-SAT workers: ``threads``, or one for 0. One worker runs CP-SAT's main search with its LP
    relaxation, which on the 2-core reference machine proves the small models faster than several
    interleaved workers (docs/solvers.md); more workers are interleaved so the search stays deterministic."""
    return options.threads or 1


class WallGuard:
    """The wall-clock safety stop: ``over()`` turns true (and ``fired`` records it) after ``limit_s``."""

    def __init__(self, limit_s: float) -> None:
        self.deadline = time.perf_counter() + limit_s
        self.fired = False

    def over(self) -> bool:
        if time.perf_counter() >= self.deadline:
            self.fired = True
        return self.fired
