"""Helpers the optimising solvers share: warm starts from the baselines, time budgets, CP-SAT settings."""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from typing import Iterator

import numpy as np
from ortools.graph.python import linear_sum_assignment

from solvers import registry
from solvers.assignment import feasible, gpu_from_placement, terms
from solvers.instance import Instance
from solvers.problem import PlacementProblem, SolveOptions

# CP-SAT's deterministic time per wall-clock second, measured on the project's 2-core reference machine
# (see docs/solvers.md): a --time-limit of T seconds becomes max_deterministic_time = T x this, so the same
# inputs, seed and limit give the same result on any machine. A CP-SAT solve of nominal time t is also cut
# at WALL_SAFETY x t of wall clock: the time limit is a wall-clock promise (docs/solvers.md, "Time limits"),
# and a cut-off by the wall clock trades reproducibility away only when it fires (the placement says so).
DET_PER_SECOND = 0.75
WALL_SAFETY = 1.0
# The wall-clock deadline of an optimising solver's searches: SEARCH_END of the limit after the start, less
# what finishing is expected to take (``finish_seconds``), so that the solve ends within the limit plus 10 %.
SEARCH_END = 0.85
# Finishing (``assignment.finish``: the objective, the bound, the check against the cost model) is expected to
# take FINISH_PER_START times one evaluation of the start's objective (at least FINISH_MIN_S), plus the cost
# model's pass over every routing entry (token x layer x rank) at about COST_CHECK_ENTRIES_PER_SECOND
# (measured on the reference machine under load).
FINISH_PER_START = 3.0
FINISH_MIN_S = 0.05
COST_CHECK_ENTRIES_PER_SECOND = 6e6


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


def finish_seconds(inst: Instance, problem: PlacementProblem, gpu_LP: np.ndarray) -> float:
    """Seconds that finishing a solve of ``inst`` is expected to take (timed on one evaluation of ``gpu_LP``)."""
    t1 = time.perf_counter()
    terms(inst, gpu_LP)
    s = max(FINISH_PER_START * (time.perf_counter() - t1), FINISH_MIN_S)
    if inst.from_paths:
        s += np.asarray(problem.paths_TLK).size / COST_CHECK_ENTRIES_PER_SECOND
    return s


def workers(options: SolveOptions) -> int:
    """CP-SAT workers: ``threads``, or one for 0. One worker runs CP-SAT's main search with its LP
    relaxation, which on the 2-core reference machine proves the small models faster than several
    interleaved workers (docs/solvers.md); more workers are interleaved so the search stays deterministic."""
    return options.threads or 1


# Whether the wall-clock stops are on (the default) in this thread: ``nominal_budgets_only`` turns them off.
_WALL_CLOCK: contextvars.ContextVar[bool] = contextvars.ContextVar("moeplace_wall_clock", default=True)


@contextlib.contextmanager
def nominal_budgets_only() -> Iterator[None]:
    """Inside: every wall-clock stop is off (``WallGuard`` never fires, CP-SAT has no wall-time limit), so the
    searches stop on their nominal budgets only (work units, CP-SAT's deterministic time) and the same inputs,
    seed and limit give the same placement on any machine under any load, however long that takes. For callers
    whose processes must agree on one answer without talking to each other (vLLM runs its EPLB policy on every
    rank, placer/integrations/vllm_eplb.py)."""
    token = _WALL_CLOCK.set(False)
    try:
        yield
    finally:
        _WALL_CLOCK.reset(token)


def wall_clock_on() -> bool:
    return _WALL_CLOCK.get()


class WallGuard:
    """The wall-clock stop: ``over()`` turns true (and ``fired`` records it) after ``limit_s``. The deadline is
    on ``time.monotonic()``, a clock every process of the machine shares, so a guard can be handed to worker
    processes (``WallGuard.until``). Under ``nominal_budgets_only`` the deadline is infinite."""

    def __init__(self, limit_s: float) -> None:
        self.deadline = time.monotonic() + limit_s if wall_clock_on() else math.inf
        self.fired = False

    @classmethod
    def until(cls, deadline: float) -> "WallGuard":
        """A guard that fires at ``deadline`` (a ``time.monotonic()`` value)."""
        guard = cls(0.0)
        if wall_clock_on():
            guard.deadline = deadline
        return guard

    def left(self) -> float:
        """Seconds until the deadline (0 once passed)."""
        return max(self.deadline - time.monotonic(), 0.0)

    def over(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.fired = True
        return self.fired


def assign_to_gpus(gain_PG: np.ndarray, s: int) -> np.ndarray | None:
    """[P] the GPU of every item that maximises the summed ``gain_PG[item, gpu]`` with exactly ``s`` items per
    GPU (a linear sum assignment of items to the slots, slot k on GPU k // s; gains rounded to 1/1000), or None
    if the assignment solver fails."""
    P, G = gain_PG.shape
    gain_slots = np.repeat(gain_PG, s, axis=1)
    a = linear_sum_assignment.SimpleLinearSumAssignment()
    ii, kk = np.meshgrid(np.arange(P), np.arange(G * s), indexing="ij")
    a.add_arcs_with_cost(ii.ravel(), kk.ravel(), (-np.round(gain_slots * 1000.0)).astype(np.int64).ravel())
    if a.solve() != a.OPTIMAL:
        return None
    return np.array([a.right_mate(i) for i in range(P)], dtype=np.int64) // s
