"""Lower bounds on the project objective of every feasible assignment of an instance, for the gap a solver
reports: each layer's largest load (the mean, the heaviest item with the lightest others) and the traffic
relaxed to b-matchings of co-located pairs solved exactly by min-cost flow, or bounded by tangents of the
convex per-item share of a token's distinct GPUs."""

from __future__ import annotations

from typing import Any

import numpy as np
from ortools.graph.python import min_cost_flow

from placer.core.mode import TrafficMode
from solvers.instance import Instance


def bmatching_ub(W: np.ndarray, cap_left: int, cap_right: int) -> float:
    """An upper bound on the largest total weight of pairs (i, j) such that each i is in at most
    ``cap_left`` pairs and each j in at most ``cap_right``: the bipartite b-matching, solved exactly as a
    min-cost flow (weights rounded up to integers, which keeps it an upper bound)."""
    W = np.asarray(W, dtype=np.float64)
    if cap_left <= 0 or cap_right <= 0 or not (W > 0).any():
        return 0.0
    n, m = W.shape
    scale = 1.0 if np.allclose(W, np.round(W)) else 1000.0
    wi = np.ceil(W * scale - 1e-9).astype(np.int64)
    ii, jj = np.nonzero(wi > 0)
    src, sink = n + m, n + m + 1
    f = min_cost_flow.SimpleMinCostFlow()
    supply = min(n * cap_left, m * cap_right)
    tails = np.concatenate([np.full(n, src), ii, n + np.arange(m), [src]])
    heads = np.concatenate([np.arange(n), n + jj, np.full(m, sink), [sink]])
    caps = np.concatenate([np.full(n, cap_left), np.ones(len(ii), np.int64), np.full(m, cap_right), [supply]])
    costs = np.concatenate([np.zeros(n, np.int64), -wi[ii, jj], np.zeros(m, np.int64), [0]])
    f.add_arcs_with_capacity_and_unit_cost(tails.astype(np.int32), heads.astype(np.int32),
                                           caps.astype(np.int64), costs.astype(np.int64))
    f.set_node_supply(src, int(supply))
    f.set_node_supply(sink, -int(supply))
    status = f.solve()
    assert status == f.OPTIMAL, f"min-cost flow status {status}"
    return -f.optimal_cost() / scale


def star_lb(W: np.ndarray, tot_P: np.ndarray, group: int, K: int) -> float:
    """A lower bound on the sum over token-layers of the distinct groups (GPUs or nodes of ``group``
    items) their items reach. Each token-layer x reaching |S(x)| groups equals the sum over its items i of
    1 / m, with m the number of x's items in i's group; 1 / m is convex in m, so it is at least any of its
    tangents, and the tokens of i have at most the top ``group - 1`` pair weights of i as partners in
    its group. Each item takes its best tangent."""
    M = min(K, group) - 1
    if M <= 0:
        return float(tot_P.sum())
    top = -np.sort(-W, axis=1)[:, :group - 1].sum(axis=1)
    top = np.minimum(top, M * tot_P)
    m0 = np.arange(M + 1, dtype=np.float64)[:, None]           # tangent points
    f, df = 1.0 / (1.0 + m0), -1.0 / (1.0 + m0) ** 2
    lb = tot_P[None, :] * (f - df * m0) + df * top[None, :]    # [M + 1, P]
    return float(lb.max(axis=0).sum())


def balance_lb(inst: Instance, l: int) -> float:
    w = np.sort(inst.load_LP[l])
    total = w.sum()
    lb = total / inst.G
    if inst.exact and (w == np.round(w)).all():  # whole loads: the largest GPU load is whole too
        lb = np.ceil(lb - 1e-9)
    # The busiest item's GPU holds s - 1 other items, at least the s - 1 lightest.
    return float(max(lb, w[-1] + w[: inst.s - 1].sum()))


def lower_bound(inst: Instance) -> tuple[float, dict[str, Any]]:
    """A valid lower bound on the objective of every feasible assignment, by parts: each layer's largest
    load (mean, heaviest item), and the traffic relaxed to a b-matching of co-located pairs (each item
    shares its GPU with s - 1 items of its layer (ep) or s items of the next layer (coherent); its node with
    s G/N - 1 or s G/N) solved by min-cost flow. Only valid for exact counts."""
    L, s, G, N = inst.L, inst.s, inst.G, inst.N
    per_node = s * G // N
    bal = sum(balance_lb(inst, l) for l in range(L))
    gpus = nodes = 0.0
    if inst.traffic and inst.mode is TrafficMode.EP:
        for l in range(L):
            t = inst.types_L[l]
            tokens = float(t.count_X.sum())
            K = t.items_XK.shape[1] if t.items_XK.ndim == 2 else 1
            if t.items_XK.shape[0] == 0:
                gpus += inst.offset_L[l]
                nodes += inst.offset_L[l]
                continue
            W = inst.pair_weights(l)
            kt = float(t.count_X.sum()) * K
            tot = np.bincount(t.items_XK.ravel(), weights=np.repeat(t.count_X, K), minlength=inst.P)
            # The pairwise b-matching is tight for top-2 and weak (and slow) for larger top-k.
            g_lb = max(tokens * np.ceil(K / s), star_lb(W, tot, s, K),
                       kt - bmatching_ub(W, s - 1, s - 1) / 2.0 if K <= 3 else 0.0)
            n_lb = max(tokens * np.ceil(K / per_node), star_lb(W, tot, per_node, K),
                       kt - bmatching_ub(W, per_node - 1, per_node - 1) / 2.0 if K <= 3 else 0.0) \
                if N > 1 else tokens
            gpus += inst.offset_L[l] + g_lb
            nodes += inst.offset_L[l] + n_lb
    elif inst.traffic:
        for l in range(L - 1):
            tr = inst.trans_LPP[l]
            gpus += tr.sum() - bmatching_ub(tr, s, s)
            if N > 1:
                nodes += tr.sum() - bmatching_ub(tr, per_node, per_node)
    parts = {"max_load_sum": bal, "gpus": gpus, "nodes": nodes}
    return inst.value(gpus, nodes, bal), parts


# -- placements -------------------------------------------------------------------------------------------

def gap_of(objective: float, bound: float) -> float:
    if objective <= 0:
        return 0.0
    return max(0.0, (objective - bound) / abs(objective))
