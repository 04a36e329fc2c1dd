"""An assignment of an instance's items to GPUs (``gpu_LP``): its objective terms, its feasibility, and the
``Placement`` (with its report) it becomes.

The terms are exactly what the cost model measures on the problem's trace (``check_with_cost_model``
verifies it when the counts come from token paths): the largest GPU load of each layer, and the distinct
GPUs and nodes of every token-layer (``ep``) or the pair hops between adjacent layers (``coherent``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numba import njit

from placer.core.cost import TraceEvaluator
from placer.core.mode import TrafficMode
from placer.core.placement import Placement, SolveReport, SolveStatus
from placer.core.trace.schema import RoutingBatch
from solvers.bounds import gap_of, lower_bound
from solvers.instance import Instance, build_instance
from solvers.problem import PlacementProblem, SolveOptions

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
        if inst.mode is TrafficMode.EP:
            d["distinct_gpus"] = float(self.gpus_L.sum())
            d["distinct_nodes"] = float(self.nodes_L.sum())
            d["remote_gpus_avg"] = float(self.gpus_L.sum()) * (inst.G - 1) / inst.G
            d["remote_nodes_avg"] = float(self.nodes_L.sum()) * (inst.N - 1) / inst.N
        else:
            d["pair_hops"] = float(self.gpus_L.sum())
            d["node_pair_hops"] = float(self.nodes_L.sum())
        return d


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


def ep_traffic(inst: Instance, gpu_LP: np.ndarray) -> np.ndarray:
    """ep: [L, 2] distinct GPUs and nodes of each layer's token-layers (``ep_layer``)."""
    return np.array([ep_layer(inst, l, gpu_LP[l]) for l in range(inst.L)]).reshape(inst.L, 2)


def coherent_traffic(inst: Instance, gpu_LP: np.ndarray) -> np.ndarray:
    """coherent: [L-1, 2] pair hops and cross-node pair hops of each transition l -> l+1 (``coherent_pair``)."""
    return np.array([coherent_pair(inst, l, gpu_LP[l], gpu_LP[l + 1]) for l in range(inst.L - 1)]).reshape(-1, 2)


# Each traffic model's counts of an assignment: [layers or transitions, 2] per GPU and per node.
TRAFFIC_TERMS: dict[TrafficMode, Callable[[Instance, np.ndarray], np.ndarray]] = {
    TrafficMode.EP: ep_traffic,
    TrafficMode.COHERENT: coherent_traffic,
}


def terms(inst: Instance, gpu_LP: np.ndarray) -> Terms:
    L = inst.L
    maxload = np.array([layer_loads(inst, l, gpu_LP[l]).max() for l in range(L)])
    if not inst.traffic:
        gpus, nodes = np.zeros(L), np.zeros(L)
    else:
        gn = TRAFFIC_TERMS[inst.mode](inst, gpu_LP)
        gpus, nodes = gn[:, 0], gn[:, 1]
    return Terms(gpus, nodes, maxload, inst.value(gpus.sum(), nodes.sum(), maxload.sum()))


def feasible(inst: Instance, gpu_LP: np.ndarray) -> bool:
    """Capacity, copy order and the balance cap."""
    if not (inst.capacity_ok(gpu_LP) and inst.order_ok(gpu_LP)):
        return False
    maxload = np.array([layer_loads(inst, l, gpu_LP[l]).max() for l in range(inst.L)])
    return bool((maxload <= inst.cap_L * (1 + REL_TOL)).all())


# -- lower bounds -----------------------------------------------------------------------------------------

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


@dataclass
class Outcome:
    """What a solver found: an assignment, whether it is proven optimal, and a bound."""

    gpu_LP: np.ndarray
    proven: bool = False
    bound: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def placement_of(inst: Instance, gpu_LP: np.ndarray, **report: Any) -> Placement:
    """The ``Placement`` of an assignment: each GPU's items in item order (an expert's copies keep their order);
    ``report``: the fields of its ``SolveReport`` (solver and start time first, see ``PlacementProblem.report``)."""
    return inst.problem.placement(gpu_LP, inst.item_expert_LP, inst.problem.report(**report))


def finish(inst: Instance, out: Outcome, solver: str, start: float) -> Placement:
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
        "weights": {**inst.weights.to_dict(), "max_imbalance": inst.max_imbalance},
        "terms": t.to_dict(inst),
        "cap_L": None if not np.isfinite(inst.cap_L).all() else [round(float(c), 3) for c in inst.cap_L],
        "objective_is_estimate": not inst.exact,
        "copies": int(inst.P - inst.E),
        **inst.extra,
        **out.extra,
    }
    if not inst.traffic:
        extra["note"] = "load-only statistics: balance only"
    return placement_of(inst, gpu, solver=solver, start=start,
                        status=SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE,
                        objective=inst.objective, objective_value=float(t.value),
                        bound=float(bound) if inst.exact else None, gap=float(gap) if inst.exact else None,
                        extra=extra)


def check_with_cost_model(inst: Instance, gpu_LP: np.ndarray, t: Terms) -> None:
    """The loads (and coherent pair hops) of the item model equal the cost model's on the same tokens."""
    p = inst.problem
    placement = p.placement(gpu_LP, inst.item_expert_LP, SolveReport())
    T = p.paths_TLK.shape[0]
    seq = p.seq_T if p.seq_T is not None else np.zeros(T, dtype=np.int64)
    ev = TraceEvaluator(placement, p.topology, inst.mode)
    ev.add(RoutingBatch(experts_TLK=np.asarray(p.paths_TLK), present_TL=p.present_TL, seq_T=np.asarray(seq)))
    measured = inst.objective.measure(ev.result())
    assert measured is not None and np.isclose(measured, t.value, rtol=1e-9, atol=1e-6), \
        f"internal error: the item model's objective {t.value} differs from the cost model's {measured}"


def judge(problem: PlacementProblem, options: SolveOptions, placement: Placement) -> tuple[Instance, Terms]:
    """The instance of ``placement``'s own copies (weights and cap from ``options``) and the terms of its
    assignment: the project objective of any placement of the problem's shape."""
    inst = build_instance(problem, options, copies_LE=placement.logcnt_LE)
    gpu = gpu_from_placement(inst, placement)
    assert gpu is not None, "internal error: a placement's own copies do not match it"
    return inst, terms(inst, gpu)


def project_terms(problem: PlacementProblem, options: SolveOptions, placement: Placement) -> dict[str, Any]:
    """The project objective and its terms for a placement that a solver optimising something else found
    (``moetuner``, ``exflow``), so that results can be compared on one scale."""
    weights = {k: v for k, v in options.params.items() if k in ("intra_weight", "inter_weight", "balance_weight")}
    inst, t = judge(problem, SolveOptions(params={**weights, "max_imbalance": 0}), placement)
    return {"cost": {"objective_name": inst.objective.name, "objective": float(t.value), "terms": t.to_dict(inst)}}
