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
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from placer.core.errors import MoeplaceError
from placer.core.objective import Quantity
from placer.core.placement import Placement
from solvers import milp
from solvers.instance import weights_of
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver


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
        cuts = np.linspace(0, paths.shape[0], batches + 1).astype(int)
        present = None if problem.present_TL is None else np.asarray(problem.present_TL, dtype=bool)
        steps = [hop_counts(paths[: cuts[b + 1]], None if present is None else present[: cuts[b + 1]], E, top1)
                 for b in range(batches) if cuts[b + 1] > cuts[b]]
    elif problem.trans_LEE is not None:
        if top1:
            raise ValueError("exflow: top1 needs token paths (a trace), not a statistics file")
        steps = [np.asarray(problem.trans_LEE, dtype=np.float64)]
    else:
        raise ValueError("exflow needs token paths or transition counts, not expert loads only")

    threads = options.threads or 1
    x = None
    res = None
    history = []
    for b, hops in enumerate(steps):
        prob, x_new, objective = build(hops, G, N, w_gpu, w_node)
        warm = x is not None
        if warm:
            # Warm start: the previous batch's placement (crossings follow from it).
            for key, v in x_new.items():
                v.setInitialValue(round(x[key].value() or 0.0))
            for v in prob.variables():
                if v.name.startswith("cross"):
                    v.setInitialValue(_crossing_value(v.name, x, hops.shape, G, N))
        res = milp.solve(prob, backend, options.time_limit_s / len(steps), threads, options.seed, warm=warm)
        if res.status == "NONE":
            raise MoeplaceError(f"exflow: batch {b + 1} of {len(steps)} found no solution within "
                               f"{options.time_limit_s / len(steps):.1f} s")
        x = x_new
        history.append({"batch": b + 1, "status": res.status, "objective": res.objective})

    gpu_LE = np.array([[next(g for g in range(G) if x[l, e, g].value() > 0.5) for e in range(E)] for l in range(L)])
    extra: dict[str, Any] = {"backend": backend, "batches": history, "top1": top1,
                             "weights": {"intra_weight": weights.intra_weight, "inter_weight": weights.inter_weight}}
    quantity = Quantity.EXFLOW_HOPS_TOP1 if top1 else Quantity.EXFLOW_HOPS
    return milp.placement_of(problem, options, gpu_LE, "exflow", start, res.status == "OPTIMAL", quantity,
                             float(res.objective), res.bound, extra)


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
