"""Lower bounds on the project objective of every feasible assignment of an instance, for the gap a solver
reports: each layer's largest load (the mean, the heaviest item with the lightest others) and the traffic
relaxed to b-matchings of co-located pairs solved exactly by min-cost flow, or bounded by tangents of the
convex per-item share of a token's distinct GPUs."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from ortools.graph.python import min_cost_flow

from solvers.instance import Instance
from solvers.layout import replicate_hottest


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
    1 / (1 + o), with o the number of x's other items in i's group, a whole number of at most
    M = min(K, group) - 1. On whole numbers 1 / (1 + o) equals its piecewise-linear interpolation g, which is
    convex and decreasing, so the sum over i's tokens is at least their number times g(their mean o)
    (Jensen), and their o add up to at most the top ``group - 1`` pair weights of i (its group's partners)."""
    M = min(K, group) - 1
    if M <= 0:
        return float(tot_P.sum())
    top = -np.sort(-W, axis=1)[:, :group - 1].sum(axis=1)
    top = np.minimum(top, M * tot_P)
    mean = np.divide(top, tot_P, out=np.zeros_like(top), where=tot_P > 0)
    lo = np.minimum(np.floor(mean), M - 1)
    frac = mean - lo
    g = (1 - frac) / (1.0 + lo) + frac / (2.0 + lo)
    return float((tot_P * g).sum())


def balance_lb_items(w_P: np.ndarray, G: int, s: int, whole: bool = False) -> float:
    """A lower bound on the largest GPU load when ``G`` GPUs hold ``s`` of the items of loads ``w_P`` each: the
    mean (rounded up for whole loads: the largest GPU load is whole too), the heaviest item with the s - 1
    lightest, and, with two items per GPU, the best pairing of the items: the heaviest with the lightest, the
    second heaviest with the second lightest, ... (exact)."""
    w = np.sort(np.asarray(w_P, dtype=np.float64))
    lb = w.sum() / G
    if whole and (w == np.round(w)).all():
        lb = np.ceil(lb - 1e-9)
    if s == 2:
        lb = max(lb, float((w + w[::-1]).max()))
    # The busiest item's GPU holds s - 1 other items, at least the s - 1 lightest.
    return float(max(lb, w[-1] + w[: s - 1].sum()))


def balance_lb(inst: Instance, l: int) -> float:
    """A lower bound on layer l's largest GPU load (``balance_lb_items`` of the layer's items)."""
    return balance_lb_items(inst.load_LP[l], inst.G, inst.s, whole=inst.exact)


def load_balance_bounds(load_LE: np.ndarray, num_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """[L] lower bounds on each layer's largest GPU load over **every** placement of the layer's experts on
    ``num_gpus`` GPUs of ``slots_per_gpu`` slots, any copies included, for loads split evenly among an expert's
    copies (a load matrix, as ``evaluate`` counts it): the mean load per GPU, and the heaviest copy with the
    s - 1 lightest copies. No placement's heaviest copy is lighter than that of EPLB's replication (each extra
    copy to the expert of the largest load per copy, which minimises the largest; ``replicate_hottest``), and no
    copy of expert e is lighter than its load over the most copies it can have (P - E + 1), so the s - 1
    lightest copies of any placement weigh at least the s - 1 smallest of those. Valid for every solver's
    placement, so the gaps of several solvers compare (``balance_lb``'s pairing and its lightest copies hold
    only for the copies an instance fixed)."""

    load_LE = np.asarray(load_LE, dtype=np.float64)
    L, E = load_LE.shape
    s = slots_per_gpu
    P = num_gpus * s
    out = np.zeros(L)
    for l in range(L):
        w = load_LE[l]
        _, cnt = replicate_hottest(w, P)
        heaviest = float((w / cnt).max())
        most = P - E + 1
        lightest = np.sort(w / most)[: s - 1]  # each expert's copies: `most` at the most, each at least w / most
        light = float(np.sort(np.repeat(lightest, min(most, s - 1)))[: s - 1].sum()) if s > 1 else 0.0
        out[l] = max(w.sum() / num_gpus, heaviest + light)
    return out


def _distinct_lb(W: np.ndarray, tot: np.ndarray, tokens: float, K: int, group: int) -> float:
    """ep: a lower bound on a layer's distinct groups (GPUs or nodes of ``group`` items), summed over its
    token-layers. With at most two items of a token in a group, its distinct groups are K minus its co-located
    pairs, and the co-located pairs of all tokens weigh at most a b-matching of the pair weights (each item
    with ``group - 1`` partners), solved exactly by min-cost flow; with more (tight for top-2, weak for larger
    top-k) the same holds as a bound; and always the convex share bound (``star_lb``)."""
    kt = tokens * K
    lb = max(tokens * np.ceil(K / group), star_lb(W, tot, group, K))
    if K <= 3 or group <= 2:
        lb = max(lb, kt - bmatching_ub(W, group - 1, group - 1) / 2.0)
    return float(lb)


@njit(cache=True)
def _pair_weights(items_XK, count_X, P):
    W = np.zeros((P, P))
    X, K = items_XK.shape
    for x in range(X):
        c = count_X[x]
        for a in range(K):
            i = items_XK[x, a]
            for b in range(a + 1, K):
                j = items_XK[x, b]
                W[i, j] += c
                W[j, i] += c
    return W


def pair_weights(inst: Instance, l: int) -> np.ndarray:
    """ep: [P, P] tokens of layer l using both items i and j (``Instance.pair_weights``, in one compiled pass
    without temporaries: the bounds of every layer need it)."""
    t = inst.types_L[l]
    if t.items_XK.ndim != 2 or t.items_XK.shape[1] < 2:
        return inst.pair_weights(l)
    return _pair_weights(t.items_XK.astype(np.int64), t.count_X.astype(np.float64), inst.P)


def ep_layer_bound(inst: Instance, l: int, cheap: bool = False) -> np.ndarray:
    """ep (or balance only): [distinct GPUs, distinct nodes, largest load] lower bounds of layer l. ``cheap``:
    without the pair weights (the balance bound and one group per K / group items of a token), for a search
    the wall clock has stopped."""
    s, N = inst.s, inst.N
    per_node = s * inst.G // N
    out = np.array([0.0, 0.0, balance_lb(inst, l)])
    if not inst.traffic:
        return out
    t = inst.types_L[l]
    tokens = float(t.count_X.sum())
    K = t.items_XK.shape[1] if t.items_XK.ndim == 2 else 1
    if t.items_XK.shape[0] == 0:
        out[:2] = inst.offset_L[l]
        return out
    if cheap:
        out[0] = inst.offset_L[l] + tokens * np.ceil(K / s)
        out[1] = inst.offset_L[l] + (tokens * np.ceil(K / per_node) if N > 1 else tokens)
        return out
    W = pair_weights(inst, l)
    tot = np.bincount(t.items_XK.ravel(), weights=np.repeat(t.count_X, K), minlength=inst.P)
    out[0] = inst.offset_L[l] + _distinct_lb(W, tot, tokens, K, s)
    out[1] = inst.offset_L[l] + (_distinct_lb(W, tot, tokens, K, per_node) if N > 1 else tokens)
    return out


def keep_layer_bounds(inst: Instance, parts_L3: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Record [L, 3] per-layer bound parts (distinct GPUs or pair hops, distinct nodes or node pair hops,
    largest load) as the instance's bounds (``layer_bounds`` then returns them)."""
    parts_L3 = np.asarray(parts_L3, dtype=np.float64)
    per_layer = np.array([inst.value(*row) for row in parts_L3])
    parts = {"max_load_sum": float(parts_L3[:, 2].sum()), "gpus": float(parts_L3[:, 0].sum()),
             "nodes": float(parts_L3[:, 1].sum())}
    inst._layer_bounds = (per_layer, parts)  # the instance is not changed after it is built
    return per_layer, parts


def layer_bounds(inst: Instance) -> tuple[np.ndarray, dict[str, Any]]:
    """[L] lower bounds of every layer's part of the objective (their sum bounds the objective; in coherent
    mode the pair hops between layers l and l + 1 are counted at layer l), and the summed parts. Only valid
    for exact counts. Computed once per instance (or given by ``keep_layer_bounds``)."""
    cached = getattr(inst, "_layer_bounds", None)
    if cached is not None:
        return cached
    L, s, G, N = inst.L, inst.s, inst.G, inst.N
    if inst.decomposes:
        return keep_layer_bounds(inst, np.stack([ep_layer_bound(inst, l) for l in range(L)]))
    per_node = s * G // N
    rows = np.zeros((L, 3))
    rows[:, 2] = [balance_lb(inst, l) for l in range(L)]
    if inst.traffic:
        for l in range(L - 1):
            tr = inst.trans_LPP[l]
            rows[l, 0] = tr.sum() - bmatching_ub(tr, s, s)
            if N > 1:
                rows[l, 1] = tr.sum() - bmatching_ub(tr, per_node, per_node)
    return keep_layer_bounds(inst, rows)


def lower_bound(inst: Instance) -> tuple[float, dict[str, Any]]:
    """A valid lower bound on the objective of every feasible assignment, by parts: each layer's largest
    load (mean, heaviest items), and the traffic relaxed to a b-matching of co-located pairs (each item
    shares its GPU with s - 1 items of its layer (ep) or s items of the next layer (coherent); its node with
    s G/N - 1 or s G/N) solved by min-cost flow, or bounded by the convex share of a token's distinct groups.
    Only valid for exact counts."""
    per_layer, parts = layer_bounds(inst)
    return inst.value(parts["gpus"], parts["nodes"], parts["max_load_sum"]), parts


# -- placements -------------------------------------------------------------------------------------------

def gap_of(objective: float, bound: float) -> float:
    if objective <= 0:
        return 0.0
    return max(0.0, (objective - bound) / abs(objective))
