"""``exflow``: ExFlow's integer program on traced token paths (Yao et al., 2024), written from the paper's
description with PuLP (backend CBC or HiGHS, ``--backend``).

Binary expert-to-GPU variables with the same number of experts on every GPU in every layer, and a
crossing variable per token hop: a hop from expert i at layer l to expert j at layer l+1 crosses GPUs
(and nodes) unless both sit on one GPU (node). The objective is the cross-GPU hops of context-coherent
expert parallelism, each weighted by its link (``intra_weight`` inside a node, ``inter_weight`` across
nodes; with one node simply the number of cross-GPU hops). Hops of identical (l, i, j) share one crossing
variable weighted by how many sampled tokens make them, which is the same program with fewer variables.

As in the paper, tokens are added in batches (``batches``, default 4, in trace order): each solve adds the
next batch's hops, starts from the previous solution (warm start) and has its share of the time limit.
With all K x K rank pairs (default) the objective equals the cost model's ``pair_hops`` on the sampled
tokens; ``top1=True`` counts only top-1 to top-1 hops (ExFlow's original count). Needs token paths or
transition counts (then one batch); one copy per expert. Load balance is not modelled (ExFlow's equal
expert counts stand in for it).

Time and memory. The program is built in Python (PuLP), at about ``TERMS_PER_SECOND`` constraint terms a
second and ``BYTES_PER_TERM`` bytes each; before each batch its size is estimated (``model_terms``), and a
batch whose program would not be built and solved before the wall-clock deadline (``SEARCH_END`` of the
limit) or would need more than ``MAX_MODEL_BYTES`` is not built: the previous batch's placement stands
(status FEASIBLE, its objective measured on every token, the bound of the tokens it was solved on, which
bounds the whole). Where not even the first batch fits, a heuristic takes its place: layer-by-layer
max-weight assignment sweeps on the hop counts from the contiguous layout (``extra["fallback"]``, no bound).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from placer.core.objective import Quantity
from placer.core.placement import Placement
from solvers import milp
from solvers.common import SEARCH_END, WallGuard, assign_to_gpus
from solvers.instance import weights_of
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver

# Building the PuLP program: constraint terms per second and bytes per term (measured on the project's 2-core
# reference machine under load: 40,000-75,000 terms a second, 250-450 bytes a term; CBC's copy is as large).
TERMS_PER_SECOND = 4e4
BYTES_PER_TERM = 1000
MAX_MODEL_BYTES = 1.5e9
# The batches stop by solvers/common.py's SEARCH_END of the limit (the rest: reading the solution, the
# placement's figures).
MIN_SOLVE_S = 0.5


def model_terms(hops_LEE: np.ndarray, G: int, N: int) -> int:
    """Constraint terms of ``build``'s program for these hop counts (its size in memory and build time)."""
    Lm1, E, _ = hops_LEE.shape
    gpn = G // N
    pairs = int((hops_LEE > 0).sum())
    symmetry = (G - N) * E * (E + 1) // 2
    return 2 * (Lm1 + 1) * E * G + symmetry + 3 * pairs * G + (pairs * N * (2 * gpn + 1) if N > 1 else 0)


def _children() -> set[int]:
    """Process ids of this process's children (Linux: /proc; elsewhere none are known)."""
    out: set[int] = set()
    for f in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            out.update(int(v) for v in f.read_text().split())
    return out


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[dict[str, bool]]:
    """Kill the child processes started inside the block (CBC) that still run after ``seconds``: CBC checks its
    time limit only now and then, and was measured running 80 s past a 1.25 s limit in its root node. Yields
    a dict whose ``"fired"`` says whether it killed one."""
    before = _children()
    state = {"fired": False}

    def fire() -> None:
        for pid in _children() - before:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                state["fired"] = True

    timer = threading.Timer(max(seconds, 0.0), fire)
    timer.daemon = True
    timer.start()
    try:
        yield state
    finally:
        timer.cancel()


def hops_value(hops_LEE: np.ndarray, gpu_LE: np.ndarray, G: int, N: int, w_gpu: float, w_node: float) -> float:
    """The weighted crossing hops of a placement (the program's objective)."""
    gpn = G // N
    v = 0.0
    for l in range(hops_LEE.shape[0]):
        a, b = gpu_LE[l][:, None], gpu_LE[l + 1][None, :]
        v += w_gpu * float(hops_LEE[l][a != b].sum()) + w_node * float(hops_LEE[l][a // gpn != b // gpn].sum())
    return v


def sweeps(hops_LEE: np.ndarray, G: int, N: int, w_gpu: float, w_node: float, wall: WallGuard) -> np.ndarray:
    """The fallback: from the contiguous layout, each layer in turn placed by the max-weight assignment of its
    experts to GPUs given its neighbours (hops kept on a GPU, and in a node), kept if the hops fall; repeated
    while it improves and the clock allows."""
    L, E = hops_LEE.shape[0] + 1, hops_LEE.shape[1]
    gpn, s = G // N, E // G
    gpu = np.repeat(np.arange(G), s)[None, :].repeat(L, axis=0)
    cur = hops_value(hops_LEE, gpu, G, N, w_gpu, w_node)
    improved = True
    while improved and not wall.over():
        improved = False
        for l in range(L):
            if wall.over():
                break
            keep = np.zeros((E, G))
            if l > 0:
                keep += hops_LEE[l - 1].T @ np.eye(G)[gpu[l - 1]]
            if l + 1 < L:
                keep += hops_LEE[l] @ np.eye(G)[gpu[l + 1]]
            node_keep = (keep @ np.eye(N)[np.arange(G) // gpn])[:, np.arange(G) // gpn]
            row = assign_to_gpus(w_gpu * keep + w_node * node_keep, s)
            if row is None:
                continue
            trial = gpu.copy()
            trial[l] = row
            v = hops_value(hops_LEE, trial, G, N, w_gpu, w_node)
            if v < cur - 1e-9:
                gpu, cur, improved = trial, v, True
    return gpu


def hop_counts(paths_TLK: np.ndarray, present_TL: np.ndarray | None, E: int, top1: bool) -> np.ndarray:
    """[L-1, E, E] hops (token, rank, rank') from expert i at layer l to expert j at l+1."""
    T, L, K = paths_TLK.shape
    out = np.zeros((max(L - 1, 0), E, E))
    ex = paths_TLK.astype(np.int64)
    ks = 1 if top1 else K
    for l in range(L - 1):
        both = np.ones(T, dtype=bool) if present_TL is None else present_TL[:, l] & present_TL[:, l + 1]
        a, b = ex[both, l, :ks], ex[both, l + 1, :ks]
        flat = (a[:, :, None] * E + b[:, None, :]).ravel()
        out[l] = np.bincount(flat, minlength=E * E).reshape(E, E)
    return out


def build(hops_LEE: np.ndarray, G: int, N: int, w_gpu: float, w_node: float) -> tuple[Any, dict, Any]:
    """The PuLP program for the given hop counts; returns (problem, x variables, objective expression)."""
    import pulp

    # Data: hop counts between adjacent layers' experts, G GPUs in N nodes, s experts per GPU.
    Lm1, E, _ = hops_LEE.shape
    L = Lm1 + 1
    s, gpn = E // G, G // N
    prob = pulp.LpProblem("exflow", pulp.LpMinimize)

    # Variables: x_{l}_{e}_{g} = expert e of layer l is on GPU g; cross_{l}_{i}_{j} (crossn: across nodes)
    # = the hop from expert i at layer l to expert j at l+1 leaves the GPU (node).
    x = {(l, e, g): prob.add_variable(f"x_{l}_{e}_{g}", cat="Binary") for l in range(L) for e in range(E)
         for g in range(G)}
    pairs = [(l, int(i), int(j)) for l in range(Lm1) for i, j in zip(*np.nonzero(hops_LEE[l]))]
    cross = {p: prob.add_variable(f"cross_{p[0]}_{p[1]}_{p[2]}", lowBound=0) for p in pairs}
    crossn = {p: prob.add_variable(f"crossn_{p[0]}_{p[1]}_{p[2]}", lowBound=0) for p in pairs} if N > 1 else {}

    # Constraints: every expert is on exactly one GPU.
    for l in range(L):
        for e in range(E):
            prob += pulp.lpSum(x[l, e, g] for g in range(G)) == 1
    # Every GPU holds the same number of experts (s) in every layer.
    for l in range(L):
        for g in range(G):
            prob += pulp.lpSum(x[l, e, g] for e in range(E)) == s
    # GPUs of a node are interchangeable: layer 0's experts fill the GPUs of each node in order (expert e on
    # a GPU no later than the first free one), which removes their symmetry.
    for e in range(E):
        for g in range(G):
            if g % gpn:
                prob += x[0, e, g] <= pulp.lpSum(x[0, f, g - 1] for f in range(e))
    # A hop crosses GPUs if expert i's GPU does not hold expert j at the next layer (and nodes likewise).
    for (l, i, j), c in cross.items():
        for g in range(G):
            prob += c >= x[l, i, g] - x[l + 1, j, g]
    for (l, i, j), c in crossn.items():
        for n in range(N):
            gs = range(n * gpn, (n + 1) * gpn)
            prob += c >= pulp.lpSum(x[l, i, g] for g in gs) - pulp.lpSum(x[l + 1, j, g] for g in gs)

    # Objective: the weighted crossing hops.
    objective = pulp.lpSum(float(hops_LEE[p]) * w_gpu * c for p, c in cross.items()) + \
        pulp.lpSum(float(hops_LEE[p]) * w_node * c for p, c in crossn.items())
    prob += objective
    return prob, x, objective


@solver("exflow", summary="ExFlow's integer program on traced token paths: fewest cross-GPU hops between layers",
        params=("backend", "batches", "top1", "intra_weight", "inter_weight"), token_paths=True, affinity=True,
        copies=False)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    backend = milp.backend_of("exflow", options.params)
    milp.require("exflow", backend)
    L, E, G, N = problem.num_layers, problem.num_experts, problem.topology.num_gpus, problem.topology.num_nodes
    batches = options.params.get("batches", 4)
    if not isinstance(batches, (int, np.integer)) or isinstance(batches, bool) or batches < 1:
        raise ValueError(f"exflow: batches must be a positive integer, got {batches!r}")
    top1 = bool(options.params.get("top1", False))
    weights = weights_of(options.params, problem)
    w_gpu, w_node = weights.intra_weight, weights.inter_weight - weights.intra_weight

    # The token batches: cumulative hop counts after each batch.
    if problem.paths_TLK is not None:
        paths = np.asarray(problem.paths_TLK)
        # More batches than tokens: one token each, as the empty batches are skipped (and a huge count would not fit).
        n = min(batches, max(paths.shape[0], 1))
        cuts = np.linspace(0, paths.shape[0], n + 1).astype(int)
        present = None if problem.present_TL is None else np.asarray(problem.present_TL, dtype=bool)
        steps = [hop_counts(paths[: cuts[b + 1]], None if present is None else present[: cuts[b + 1]], E, top1)
                 for b in range(n) if cuts[b + 1] > cuts[b]]
    elif problem.trans_LEE is not None:
        if top1:
            raise ValueError("exflow: top1 needs token paths (a trace), not a statistics file")
        steps = [np.asarray(problem.trans_LEE, dtype=np.float64)]
    else:
        raise ValueError("exflow needs token paths or transition counts, not expert loads only")

    threads = options.threads or 1
    wall = WallGuard(options.time_limit_s * SEARCH_END)
    x = None
    res = None
    history: list[dict[str, Any]] = []
    stopped = None
    for b, hops in enumerate(steps):
        terms = model_terms(hops, G, N)
        build_s = terms / TERMS_PER_SECOND
        if terms * BYTES_PER_TERM > MAX_MODEL_BYTES:
            stopped = f"batch {b + 1}'s program would need about {terms * BYTES_PER_TERM / 1e9:.1f} GB"
            break
        # Its build, CBC's copy of it and a minimal solve must fit in what the wall clock leaves.
        if 2 * build_s + MIN_SOLVE_S > wall.left():
            stopped = f"batch {b + 1}'s program would not be built and solved within the time limit"
            break
        prob, x_new, objective = build(hops, G, N, w_gpu, w_node)
        warm = x is not None
        if warm:
            # Warm start: the previous batch's placement (crossings follow from it).
            for key, v in x_new.items():
                v.setInitialValue(round(x[key].value() or 0.0))
            for v in prob.variables():
                if v.name.startswith("cross"):
                    v.setInitialValue(_crossing_value(v.name, x, hops.shape, G, N))
        share = max(min(options.time_limit_s / len(steps), (wall.left() - build_s) / (len(steps) - b)), MIN_SOLVE_S)
        with watchdog(min(1.1 * share + 0.2, wall.left())) as dog:
            try:
                res_b = milp.solve(prob, backend, share, threads, options.seed, warm=warm)
            except Exception:  # noqa: BLE001 - PuLP's error for a solver process the watchdog killed
                if not dog["fired"]:
                    raise
                res_b = milp.MilpResult("NONE", None, None)
        if res_b.status == "NONE":
            stopped = f"batch {b + 1} found no solution within its {share:.1f} s"
            break
        x, res = x_new, res_b
        history.append({"batch": b + 1, "status": res.status, "objective": res.objective})

    extra: dict[str, Any] = {"backend": backend, "batches": history, "top1": top1,
                             "weights": {"intra_weight": weights.intra_weight, "inter_weight": weights.inter_weight},
                             "stopped_by_wall_clock": stopped is not None and "GB" not in stopped}
    quantity = Quantity.EXFLOW_HOPS_TOP1 if top1 else Quantity.EXFLOW_HOPS
    if x is None:
        # Not even the first batch fits: the assignment sweeps, with no bound.
        gpu_LE = sweeps(steps[-1], G, N, w_gpu, w_node, WallGuard(max(wall.left(), 0.1)))
        extra["fallback"] = f"assignment sweeps: {stopped}"
        return milp.placement_of(problem, options, gpu_LE, "exflow", start, False, quantity,
                                 hops_value(steps[-1], gpu_LE, G, N, w_gpu, w_node), None, extra)
    gpu_LE = np.array([[next(g for g in range(G) if x[l, e, g].value() > 0.5) for e in range(E)] for l in range(L)])
    complete = len(history) == len(steps)
    if not complete:
        # Solved on the first batches' tokens only: the objective on every token; the bound of the tokens it was
        # solved on is below every placement's hops on all tokens, so it still bounds the whole.
        extra["stopped"] = stopped
    value = float(res.objective) if complete else hops_value(steps[-1], gpu_LE, G, N, w_gpu, w_node)
    return milp.placement_of(problem, options, gpu_LE, "exflow", start, complete and res.status == "OPTIMAL",
                             quantity, value, res.bound, extra)


def _crossing_value(name: str, x: dict, shape: tuple, G: int, N: int) -> float:
    """The value of a crossing variable implied by the placement in ``x`` (for the warm start)."""
    kind, l, i, j = name.split("_")
    l, i, j = int(l), int(i), int(j)
    gi = next(g for g in range(G) if (x[l, i, g].value() or 0) > 0.5)
    gj = next(g for g in range(G) if (x[l + 1, j, g].value() or 0) > 0.5)
    if kind == "cross":
        return float(gi != gj)
    gpn = G // N
    return float(gi // gpn != gj // gpn)
