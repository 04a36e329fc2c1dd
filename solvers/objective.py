"""The objective every optimising solver reports, its lower bounds, and turning item assignments into a
``Placement``.

Objective (``docs/solvers.md``), summed over layers, with ``Weights`` w:

- ``ep``: ``w.intra x remote GPUs + (w.inter - w.intra) x remote nodes + w.balance x largest GPU load``,
  where remote GPUs / nodes are the cost model's ``remote_gpus`` / ``remote_nodes`` **averaged over the
  token's home rank** (uniform over the GPUs, independent of routing): (G-1)/G x distinct GPUs and
  (N-1)/N x distinct nodes of each token-layer. This is ``evaluate``'s figure averaged over the G
  rotations of the home ranks; the home rank itself is set by attention data parallelism at serving time,
  so a placement cannot (and must not) be fitted to the trace's sequence numbering.
- ``coherent``: ``w.intra x pair hops + (w.inter - w.intra) x cross-node pair hops + w.balance x largest
  GPU load``: the cost model's ``pair_hops`` / ``node_pair_hops`` (NVLink hops cost ``w.intra``, network
  hops ``w.inter``).

The largest GPU load is the cost model's per-layer ``max_load`` (exact under the replica rule).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from placer.core.placement import Placement
from solvers.instance import Instance

REL_TOL = 1e-9


@dataclass
class Terms:
    """The parts of the objective of one assignment."""

    gpus_L: np.ndarray      # ep: [L] distinct GPUs summed over token-layers; coherent: [L-1] pair hops
    nodes_L: np.ndarray     # ep: [L] distinct nodes; coherent: [L-1] cross-node pair hops
    maxload_L: np.ndarray   # [L] largest GPU load
    value: float

    def to_dict(self, inst: Instance) -> dict[str, Any]:
        d: dict[str, Any] = {"max_load_sum": float(self.maxload_L.sum())}
        if inst.mode == "ep":
            d["distinct_gpus"] = float(self.gpus_L.sum())
            d["distinct_nodes"] = float(self.nodes_L.sum())
            d["remote_gpus_avg"] = float(self.gpus_L.sum()) * (inst.G - 1) / inst.G
            d["remote_nodes_avg"] = float(self.nodes_L.sum()) * (inst.N - 1) / inst.N
        else:
            d["pair_hops"] = float(self.gpus_L.sum())
            d["node_pair_hops"] = float(self.nodes_L.sum())
        return d


def objective_name(inst: Instance) -> str:
    """The objective as a weighted sum of the cost model's named quantities (``placer.core.cost.OBJECTIVES``),
    which ``evaluate`` measures (``objective_measured``)."""
    names = ("ep_dispatch_gpus", "ep_dispatch_nodes") if inst.mode == "ep" else \
        ("coherent_pair_hops", "coherent_node_pair_hops")
    parts = [(inst.c_gpu, names[0]), (inst.c_node, names[1])] if inst.traffic else []
    parts.append((inst.c_bal, "max_load"))
    kept = [f"{c!r}*{n}" for c, n in parts if c != 0]
    return "+".join(kept) or "0.0*max_load"


def combine(inst: Instance, gpus: float, nodes: float, maxload: float) -> float:
    return inst.c_gpu * gpus + inst.c_node * nodes + inst.c_bal * maxload


def layer_loads(inst: Instance, l: int, gpu_P: np.ndarray) -> np.ndarray:
    return np.bincount(gpu_P, weights=inst.load_LP[l], minlength=inst.G)


@njit(cache=True)
def distinct_of(items_K, gpu_P, node_G, dg, dn):
    """The distinct GPUs (into ``dg``) and nodes (into ``dn``) of one token type; returns their counts."""
    ng = 0
    nn = 0
    for k in range(items_K.shape[0]):
        g = gpu_P[items_K[k]]
        seen = False
        for q in range(ng):
            if dg[q] == g:
                seen = True
                break
        if seen:
            continue
        dg[ng] = g
        ng += 1
        n = node_G[g]
        seen = False
        for q in range(nn):
            if dn[q] == n:
                seen = True
                break
        if not seen:
            dn[nn] = n
            nn += 1
    return ng, nn


@njit(cache=True)
def _distinct(items_XK, count_X, gpu_P, node_G):
    X, K = items_XK.shape
    dg = np.empty(K, np.int64)
    dn = np.empty(K, np.int64)
    sg = 0.0
    sn = 0.0
    for x in range(X):
        ng, nn = distinct_of(items_XK[x], gpu_P, node_G, dg, dn)
        sg += count_X[x] * ng
        sn += count_X[x] * nn
    return sg, sn


def ep_layer(inst: Instance, l: int, gpu_P: np.ndarray) -> tuple[float, float]:
    """Distinct GPUs and distinct nodes summed over layer l's token-layers (plus the surrogate offset)."""
    t = inst.types_L[l]
    if t.items_XK.shape[0] == 0:
        return float(inst.offset_L[l]), float(inst.offset_L[l])
    sg, sn = _distinct(t.items_XK, t.count_X, np.asarray(gpu_P, dtype=np.int64), inst.node_of_gpu.astype(np.int64))
    return float(inst.offset_L[l] + sg), float(inst.offset_L[l] + sn)


def coherent_pair(inst: Instance, l: int, gpu_a: np.ndarray, gpu_b: np.ndarray) -> tuple[float, float]:
    """Pair hops and cross-node pair hops between layers l and l+1."""
    tr = inst.trans_LPP[l]
    node = inst.node_of_gpu
    hops = float((tr * (gpu_a[:, None] != gpu_b[None, :])).sum())
    nhops = float((tr * (node[gpu_a][:, None] != node[gpu_b][None, :])).sum()) if inst.N > 1 else 0.0
    return hops, nhops


def terms(inst: Instance, gpu_LP: np.ndarray) -> Terms:
    L = inst.L
    maxload = np.array([layer_loads(inst, l, gpu_LP[l]).max() for l in range(L)])
    if not inst.traffic:
        gpus, nodes = np.zeros(L), np.zeros(L)
    elif inst.mode == "ep":
        gn = np.array([ep_layer(inst, l, gpu_LP[l]) for l in range(L)]).reshape(L, 2)
        gpus, nodes = gn[:, 0], gn[:, 1]
    else:
        gn = np.array([coherent_pair(inst, l, gpu_LP[l], gpu_LP[l + 1]) for l in range(L - 1)]).reshape(-1, 2)
        gpus, nodes = gn[:, 0], gn[:, 1]
    return Terms(gpus, nodes, maxload, combine(inst, gpus.sum(), nodes.sum(), maxload.sum()))


def feasible(inst: Instance, gpu_LP: np.ndarray) -> bool:
    """Capacity, copy order and the balance cap."""
    if not (inst.capacity_ok(gpu_LP) and inst.order_ok(gpu_LP)):
        return False
    maxload = np.array([layer_loads(inst, l, gpu_LP[l]).max() for l in range(inst.L)])
    return bool((maxload <= inst.cap_L * (1 + REL_TOL)).all())


# -- lower bounds -----------------------------------------------------------------------------------------

def bmatching_ub(W: np.ndarray, cap_left: int, cap_right: int) -> float:
    """An upper bound on the largest total weight of pairs (i, j) such that each i is in at most
    ``cap_left`` pairs and each j in at most ``cap_right``: the bipartite b-matching, solved exactly as a
    min-cost flow (weights rounded up to integers, which keeps it an upper bound)."""
    from ortools.graph.python import min_cost_flow

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


def pair_weights(inst: Instance, l: int) -> np.ndarray:
    """[P, P] tokens of layer l using both items i and j (i != j), from its types (symmetric)."""
    t = inst.types_L[l]
    P = inst.P
    X, K = t.items_XK.shape
    W = np.zeros(P * P)
    if X and K > 1:
        a, b = np.triu_indices(K, k=1)
        flat = (t.items_XK[:, a].astype(np.int64) * P + t.items_XK[:, b]).ravel()
        W = np.bincount(flat, weights=np.repeat(t.count_X, len(a)), minlength=P * P)
    W = W.reshape(P, P)
    return W + W.T


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
    if inst.traffic and inst.mode == "ep":
        for l in range(L):
            t = inst.types_L[l]
            tokens = float(t.count_X.sum())
            K = t.items_XK.shape[1] if t.items_XK.ndim == 2 else 1
            if t.items_XK.shape[0] == 0:
                gpus += inst.offset_L[l]
                nodes += inst.offset_L[l]
                continue
            W = pair_weights(inst, l)
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
    return combine(inst, gpus, nodes, bal), parts


# -- placements -------------------------------------------------------------------------------------------

def rows_from_gpu(inst: Instance, gpu_LP: np.ndarray) -> np.ndarray:
    """[L, P] slots GPU-major: each GPU's items in item order (so an expert's copies keep copy order)."""
    rows = np.empty((inst.L, inst.P), dtype=np.int64)
    for l in range(inst.L):
        order = np.lexsort((np.arange(inst.P), gpu_LP[l]))
        rows[l] = inst.item_expert_LP[l][order]
    return rows


def gpu_from_placement(inst: Instance, placement: Placement) -> np.ndarray | None:
    """[L, P] the GPU of each item in ``placement``, or None if its copy counts differ from the instance's."""
    if placement.num_slots != inst.P or not np.array_equal(placement.logcnt_LE, inst.cnt_LE):
        return None
    l2p = placement.log2phy_LER()
    gpu_of_slot = placement.gpu_of_slot()
    out = np.empty((inst.L, inst.P), dtype=np.int64)
    for l in range(inst.L):
        for e in range(inst.E):
            c = inst.cnt_LE[l, e]
            out[l, inst.base_LE[l, e]: inst.base_LE[l, e] + c] = gpu_of_slot[l2p[l, e, :c]]
    return out


def gap_of(objective: float, bound: float) -> float:
    if objective <= 0:
        return 0.0
    return max(0.0, (objective - bound) / abs(objective))


@dataclass
class Outcome:
    """What a solver found: an assignment, whether it is proven optimal, and a bound."""

    gpu_LP: np.ndarray
    proven: bool = False
    bound: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_placement(inst: Instance, out: Outcome, solver: str, start: float) -> Placement:
    """The ``Placement`` of an outcome: objective computed from the counts (and checked against the cost
    model when the counts come from token paths), bound = the best of the solver's and ``lower_bound``,
    status OPTIMAL only when proven on exact counts."""
    gpu = out.gpu_LP
    assert feasible(inst, gpu), f"{solver}: internal error: infeasible assignment"
    t = terms(inst, gpu)
    if inst.from_paths:
        check_with_cost_model(inst, gpu, t)
    lb, parts = lower_bound(inst)
    assert lb <= t.value * (1 + 1e-9) + 1e-6, f"{solver}: internal error: bound {lb} above objective {t.value}"
    if out.bound is not None:
        assert out.bound <= t.value * (1 + 1e-9) + 1e-6, \
            f"{solver}: internal error: the solver's bound {out.bound} is above the objective {t.value}"
    bound = lb if out.bound is None else max(lb, out.bound)
    bound = min(bound, t.value)
    gap = gap_of(t.value, bound)
    proven = (out.proven or gap <= 1e-9) and inst.exact
    if proven:
        bound, gap = t.value, 0.0
    extra = {
        "weights": inst.weights.to_dict(),
        "terms": t.to_dict(inst),
        "cap_L": None if not np.isfinite(inst.cap_L).all() else [round(float(c), 3) for c in inst.cap_L],
        "objective_is_estimate": not inst.exact,
        "copies": int(inst.P - inst.E),
        **inst.extra,
        **out.extra,
    }
    if not inst.traffic:
        extra["note"] = "load-only statistics: balance only"
    return Placement(
        phy2log_LP=rows_from_gpu(inst, gpu),
        num_gpus=inst.G,
        num_nodes=inst.N,
        num_experts=inst.E,
        solver=solver,
        status="OPTIMAL" if proven else "FEASIBLE",
        objective=float(t.value),
        objective_name=objective_name(inst),
        bound=float(bound) if inst.exact else None,
        gap=float(gap) if inst.exact else None,
        wall_time_s=time.perf_counter() - start,
        mode=inst.mode,
        source=inst.problem.source,
        model_layer_indices=inst.problem.model_layer_indices,
        topology=inst.problem.topology,
        extra=extra,
    )


def check_with_cost_model(inst: Instance, gpu_LP: np.ndarray, t: Terms) -> None:
    """The loads (and coherent pair hops) of the item model equal the cost model's on the same tokens."""
    from placer.core.cost import TraceEvaluator
    from placer.core.trace.schema import RoutingBatch

    p = inst.problem
    placement = Placement(rows_from_gpu(inst, gpu_LP), inst.G, inst.E, inst.N, topology=p.topology)
    T = p.paths_TLK.shape[0]
    seq = p.seq_T if p.seq_T is not None else np.zeros(T, dtype=np.int64)
    ev = TraceEvaluator(placement, p.topology, inst.mode)
    ev.add(RoutingBatch(experts_TLK=np.asarray(p.paths_TLK), present_TL=p.present_TL, seq_T=np.asarray(seq)))
    r = ev.result()
    from placer.core.cost import measured_objective

    measured = measured_objective(r, objective_name(inst))
    assert measured is not None and np.isclose(measured, t.value, rtol=1e-9, atol=1e-6), \
        f"internal error: the item model's objective {t.value} differs from the cost model's {measured}"
