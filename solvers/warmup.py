"""Compile the search kernels before the clock starts.

The optimising solvers search with numba kernels (``solvers/localsearch.py``, ``solvers/robust.py``,
``solvers/bounds.py``, ``solvers/assignment.py``). The first solve after installing moeplace compiles them: about
13 s for ``ep`` and 5 s more for ``coherent`` on the 2-core reference machine (idle), once; later processes load
them from numba's cache (about 0.2-1.5 s). That is not search time: a solver registered with ``compiled=True``
first solves a tiny problem of the same mode in this process (once per solver, mode and robust or not), so that
``--time-limit`` buys the same search on the first run as on every later one.
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np
from numba.core.dispatcher import Dispatcher

from placer.core.mode import TrafficMode
from placer.core.stats.core import compute_stats
from placer.core.topology import Topology
from placer.core.trace.schema import RoutingBatch
from solvers.problem import PlacementProblem, SolveOptions

_DONE: set[tuple[str, TrafficMode, bool]] = set()


def tiny_problem(mode: TrafficMode, seed: int = 0) -> PlacementProblem:
    """2 layers x 8 experts, top-2, 64 tokens with token paths, on 4 GPUs in 2 nodes with 4 redundant slots:
    every kernel of both traffic models runs on it."""
    rng = np.random.default_rng(seed)
    T, L, E, K = 64, 2, 8, 2
    paths = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)]) for _ in range(T)])
    st = compute_stats([RoutingBatch(paths)], L, E, K)
    return PlacementProblem(st.load_LE, Topology(4, 2), num_redundant=4, mode=mode, top_k=K, coact_LEE=st.coact_LEE,
                            trans_LEE=st.trans_LEE, paths_TLK=paths, present_TL=np.ones((T, L), bool),
                            seq_T=np.zeros(T, dtype=np.int64))


# The warm-up's solves: this limit each, again (at most WARM_UP_ROUNDS times) while a run compiled (or loaded)
# a kernel: the compilation may have eaten that run's time before it reached the later steps' kernels.
WARM_UP_LIMIT_S = 0.25
WARM_UP_ROUNDS = 8


def compiled_kernels() -> int:
    """How many (kernel, signature) pairs the project's numba kernels have compiled or loaded in this process."""
    n = 0
    for name, module in list(sys.modules.items()):
        if module is not None and name.split(".")[0] in ("solvers", "placer"):
            n += sum(len(v.signatures) for v in vars(module).values() if isinstance(v, Dispatcher))
    return n


def warm_up(name: str, mode: TrafficMode, robust: bool,
            run: Callable[[list[PlacementProblem], SolveOptions], object]) -> None:
    """Once per process and (solver, mode, robust): ``run`` the solver on tiny problems (two scenarios when
    ``robust``), so that its kernels are compiled or loaded before a timed solve."""
    key = (name, TrafficMode.parse(mode), robust)
    if key in _DONE:
        return
    _DONE.add(key)  # first: the warm-up's own solve must not warm up again
    problems = [tiny_problem(key[1], seed) for seed in ((0, 1) if robust else (0,))]
    for _ in range(WARM_UP_ROUNDS):
        before = compiled_kernels()
        run(problems, SolveOptions(time_limit_s=WARM_UP_LIMIT_S))
        if compiled_kernels() == before:
            break
