"""Swap local search for large instances (``auto``), with exact move costs, compiled with numba.

A move swaps two items of one layer on different GPUs (every GPU keeps its s items). Its exact change of
the objective is computed in O(1) from running sums that are updated when a swap is applied:

- ``ep`` (one layer at a time, the objective decomposes by layer): for each token type x the number of its
  items on each GPU, ``cnt[x, g]``; per item i the tokens (weighted by type count) that reach GPU g
  (``B[i, g]``), that have i alone on its GPU (``lone[i]``), and per pair (i, j) the tokens holding both,
  with each alone on its GPU (``C[i, j]``). Moving i from g1 to g2 adds the tokens of i that did not reach
  g2 and removes those where i was alone on g1; tokens holding both swapped items keep their GPU set,
  which ``C`` corrects. The same sums per node give the distinct-node change.
- ``coherent`` (all layers): ``H[l, i, g]``: transitions between item i of layer l and the items of the
  neighbouring layers that sit on GPU g (``HN`` per node). Swapping i (g1) and j (g2) changes the hops by
  ``H[i, g1] - H[i, g2] + H[j, g2] - H[j, g1]``; the neighbours' sums change in O(P).

Balance enters through the layer's largest load (the top-three GPU loads give the new maximum of a swap in
O(1)) and the cap, which a move must respect. Copies of an expert stay in GPU order, on different GPUs (a
second copy on a GPU only splits that GPU's tokens: a wasted slot). One check says which swaps are allowed
(``swap_max``). Only improving moves are taken (best partner for each item in turn), so the result is never
worse than the start. Work is counted in elementary updates and bounded, so results do not depend on the
machine's speed.

Layout: the kernels take their arrays grouped in small named tuples, built in one place each (``Rules`` and
``Costs``; ``EpData`` and the running sums ``EpSums``, ``PairSums``, ``CoherentSums``); a move is a change
(``ep_change``, ``pair_change``, ``coherent_change``) and an update (``ep_swap``, ``pair_swap``,
``coherent_swap``), which ``tests/solvers/test_localsearch.py`` checks move by move against the objective
recomputed from scratch (``ep_move``, ``pair_move``, ``coherent_move``: the check and the change a search's
loop computes). Each search returns the change it predicts; with ``CHECK_CHANGES`` (on in the tests) its
caller asserts that the objective changed by that much.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from numba import njit

from solvers.assignment import distinct_of, ep_layer, layer_loads, terms
from solvers.instance import Instance

EPS = 1e-9
SAMPLE_TYPES = 16384  # the exact ep search works on at most this many token types per layer
# Check every search's predicted change against the objective computed from scratch (the tests turn it on with
# MOEPLACE_CHECK_SEARCH=1).
CHECK_CHANGES = os.environ.get("MOEPLACE_CHECK_SEARCH") == "1"


# -- what every swap must keep -----------------------------------------------------------------------------

class Rules(NamedTuple):
    """What a swap of two items of one layer must keep, for the layers searched (ep: the one layer, L = 1)."""

    w: np.ndarray      # [L, P] tokens each item serves
    cap: np.ndarray    # [L] the layer's largest GPU load allowed
    prev: np.ndarray   # [L, P] the previous copy of the same expert (-1: none)
    nxt: np.ndarray    # [L, P] the next copy (-1: none)
    step: int          # copy r + 1 sits at least this many GPUs above copy r (1: copies on different GPUs)


class Costs(NamedTuple):
    """The objective's weights: one distinct GPU / node (ep) or one cross-GPU / cross-node hop (coherent), and one
    token on a layer's busiest GPU."""

    cg: float
    cn: float
    cb: float


def rules_of(inst: Instance, layers: slice = slice(None),
             prev_next: tuple[np.ndarray, np.ndarray] | None = None) -> Rules:
    """The rules of ``layers`` (all, or ``slice(l, l + 1)`` for one ep layer); ``prev_next``: ``inst.prev_next_LP()``
    if already made."""
    prev, nxt = inst.prev_next_LP() if prev_next is None else prev_next
    cap = np.where(np.isfinite(inst.cap_L), inst.cap_L * (1 + 1e-12), 1e300)
    return Rules(inst.load_LP[layers].astype(np.float64), cap[layers], prev[layers], nxt[layers], inst.copy_step)


def costs_of(inst: Instance) -> Costs:
    return Costs(inst.c_gpu if inst.traffic else 0.0, inst.c_node if inst.traffic else 0.0, inst.c_bal)


@njit(cache=True)
def _top3(load):
    G = load.shape[0]
    a = b = c = -1
    for g in range(G):
        if a < 0 or load[g] > load[a]:
            c, b, a = b, a, g
        elif b < 0 or load[g] > load[b]:
            c, b = b, g
        elif c < 0 or load[g] > load[c]:
            c = g
    return a, b, c


@njit(cache=True, inline="always")
def swap_max(l, r, i, j, gpu, prev, nxt, step, load, w, cap, a, b, c):
    """The one feasibility check of a swap of items i and j of a layer: on different GPUs, every expert's copies
    kept in GPU order ``step`` GPUs apart at least (step 1: no GPU gets a second copy of an expert; two
    neighbouring copies never swap), and no GPU above ``cap``. Returns the layer's largest load after the swap,
    or -1 if it is not allowed.

    Row l of ``gpu``, ``prev``, ``nxt`` ([., P]: ``Rules``) is the layer's; row r of ``load`` [., G] and ``w``
    [., P] its loads (r = l, or a scenario's row); ``a, b, c``: that row's three most loaded GPUs (``_top3``).
    Written without early returns (an index -1 reads a valid element whose value is then ignored): with them,
    the inlined call made the search loops two to three times slower."""
    g1 = gpu[l, i]
    g2 = gpu[l, j]
    pi = prev[l, i]
    ni = nxt[l, i]
    pj = prev[l, j]
    nj = nxt[l, j]
    ok = (g2 != g1) & (j != pi) & (j != ni)
    ok &= (pi < 0) | (gpu[l, pi] + step <= g2)
    ok &= (ni < 0) | (gpu[l, ni] >= g2 + step)
    ok &= (pj < 0) | (gpu[l, pj] + step <= g1)
    ok &= (nj < 0) | (gpu[l, nj] >= g1 + step)
    l1 = load[r, g1] - w[r, i] + w[r, j]
    l2 = load[r, g2] - w[r, j] + w[r, i]
    ok &= (l1 <= cap) & (l2 <= cap)
    # the largest load of the other GPUs: the first of the top three that is neither g1 nor g2
    t = a if (a >= 0) & (a != g1) & (a != g2) else (b if (b >= 0) & (b != g1) & (b != g2) else
                                                    (c if (c >= 0) & (c != g1) & (c != g2) else -1))
    m = max(load[r, t] if t >= 0 else -1e300, l1, l2)
    return m if ok else -1.0


@njit(cache=True, inline="always")
def _move_load(load, w, i, j, g1, g2):
    """Item i leaves g1 for g2, j leaves g2 for g1; returns the new top three GPUs."""
    load[g1] += w[j] - w[i]
    load[g2] += w[i] - w[j]
    return _top3(load)


# -- ep: one layer ----------------------------------------------------------------------------------------

class EpData(NamedTuple):
    """One ep layer's token types, as the exact search reads them."""

    types: np.ndarray  # [X, K] items of each type
    cnt: np.ndarray    # [X] tokens of each type
    ptr: np.ndarray    # [P + 1] CSR: the types holding item i are occ[ptr[i]:ptr[i + 1]]
    occ: np.ndarray
    node: np.ndarray   # [G] node of each GPU
    N: int


class EpSums(NamedTuple):
    """The running sums of the exact ep search for the current assignment (module docstring), with scratch."""

    cntg: np.ndarray   # [X, G] items of type x on GPU g
    cntn: np.ndarray   # [X, N] per node
    B: np.ndarray      # [P, G] tokens of item i whose type reaches GPU g
    lone: np.ndarray   # [P] tokens of item i with i alone on its GPU
    C: np.ndarray      # [P, P] tokens holding i and j on different GPUs, each alone on its GPU (counted per alone)
    BN: np.ndarray     # the same three per node
    loneN: np.ndarray
    CN: np.ndarray
    tot: np.ndarray    # [P] tokens of item i
    load: np.ndarray   # [G] GPU loads
    top: np.ndarray    # [3] the three most loaded GPUs
    dg: np.ndarray     # scratch: distinct GPUs / nodes of one type
    dn: np.ndarray
    stamp: np.ndarray  # scratch: the types a swap touches
    affected: np.ndarray
    mark: np.ndarray   # [1]


@njit(cache=True, inline="always")
def _ep_contrib(x, sign, data, s, gpu):
    """Add (sign=1) or remove (-1) token type x's share of the running sums, for the current state."""
    types, node = data.types, data.node
    cntg, cntn, B, lone, C, BN, loneN, CN, tot = s.cntg, s.cntn, s.B, s.lone, s.C, s.BN, s.loneN, s.CN, s.tot
    dg, dn = s.dg, s.dn
    K = types.shape[1]
    c = data.cnt[x] * sign
    ng, nn = distinct_of(types[x], gpu, node, dg, dn)
    for k in range(K):
        i = types[x, k]
        gi = gpu[i]
        ni = node[gi]
        tot[i] += c
        if cntg[x, gi] == 1:
            lone[i] += c
        if cntn[x, ni] == 1:
            loneN[i] += c
        for q in range(ng):
            B[i, dg[q]] += c
        for q in range(nn):
            BN[i, dn[q]] += c
        for k2 in range(k + 1, K):
            j = types[x, k2]
            gj = gpu[j]
            if gj != gi:
                v = c * ((cntg[x, gi] == 1) + (cntg[x, gj] == 1))
                C[i, j] += v
                C[j, i] += v
            nj = node[gj]
            if nj != ni:
                v = c * ((cntn[x, ni] == 1) + (cntn[x, nj] == 1))
                CN[i, j] += v
                CN[j, i] += v


@njit(cache=True)
def ep_sums(data, gpu, w):
    """The running sums of assignment ``gpu`` [P] of one ep layer with item loads ``w``."""
    types, node = data.types, data.node
    X, K = types.shape
    P = gpu.shape[0]
    G = node.shape[0]
    N = data.N
    cntg = np.zeros((X, G), np.int16)
    cntn = np.zeros((X, N), np.int16)
    for x in range(X):
        for k in range(K):
            g = gpu[types[x, k]]
            cntg[x, g] += 1
            cntn[x, node[g]] += 1
    load = np.zeros(G)
    for i in range(P):
        load[gpu[i]] += w[i]
    top = np.empty(3, np.int64)
    top[0], top[1], top[2] = _top3(load)
    s = EpSums(cntg, cntn, np.zeros((P, G)), np.zeros(P), np.zeros((P, P)), np.zeros((P, N)), np.zeros(P),
               np.zeros((P, P)), np.zeros(P), load, top, np.empty(K, np.int64), np.empty(K, np.int64),
               np.zeros(X, np.int64), np.empty(X, np.int64), np.zeros(1, np.int64))
    for x in range(X):
        _ep_contrib(x, 1.0, data, s, gpu)
    return s


@njit(cache=True, inline="always")
def ep_change(i, j, g1, g2, m, cur, node, tot, B, lone, C, BN, loneN, CN, cg, cn, cb):
    """The exact change of the layer's objective if items i (on g1) and j (on g2) swap, its largest load going
    from cur to m (``EpSums``' arrays as locals)."""
    d = cb * (m - cur)
    d += cg * ((tot[i] - B[i, g2] - lone[i]) + (tot[j] - B[j, g1] - lone[j]) + C[i, j])
    n1 = node[g1]
    n2 = node[g2]
    # (no branch: a term times 0 adds 0.0, and the inlined function stays fast)
    d += cn * ((tot[i] - BN[i, n2] - loneN[i]) + (tot[j] - BN[j, n1] - loneN[j]) + CN[i, j]) * (n1 != n2)
    return d


@njit(cache=True)
def ep_move(data, s, rules, costs, gpu, i, j):
    """The change ``ep_layer_search`` predicts for swapping items i and j, or nan if the swap is not allowed (for
    the tests: the same two functions its loop calls)."""
    top = s.top
    m = swap_max(0, 0, i, j, gpu.reshape(1, -1), rules.prev, rules.nxt, rules.step, s.load.reshape(1, -1), rules.w,
                 rules.cap[0], top[0], top[1], top[2])
    if m < 0.0:
        return np.nan
    return ep_change(i, j, gpu[i], gpu[j], m, s.load[top[0]], data.node, s.tot, s.B, s.lone, s.C, s.BN, s.loneN,
                     s.CN, costs.cg, costs.cn, costs.cb)


@njit(cache=True)
def ep_swap(data, s, gpu, w, i, j):
    """Swap items i and j (on different GPUs) and update the running sums; returns the work done."""
    # (fields read once: a field read from a named tuple inside a loop costs a reference count each time)
    types, node, ptr, occ = data.types, data.node, data.ptr, data.occ
    stamp, affected, cntg, cntn = s.stamp, s.affected, s.cntg, s.cntn
    K = types.shape[1]
    g1 = gpu[i]
    g2 = gpu[j]
    s.mark[0] += 1
    mark = s.mark[0]
    na = 0
    for p in range(ptr[i], ptr[i + 1]):
        x = occ[p]
        stamp[x] = mark
        affected[na] = x
        na += 1
    for p in range(ptr[j], ptr[j + 1]):
        x = occ[p]
        if stamp[x] != mark:
            stamp[x] = mark
            affected[na] = x
            na += 1
    for q in range(na):
        _ep_contrib(affected[q], -1.0, data, s, gpu)
    for q in range(na):
        x = affected[q]
        for k in range(K):
            it = types[x, k]
            if it == i:
                cntg[x, g1] -= 1
                cntg[x, g2] += 1
                cntn[x, node[g1]] -= 1
                cntn[x, node[g2]] += 1
            elif it == j:
                cntg[x, g2] -= 1
                cntg[x, g1] += 1
                cntn[x, node[g2]] -= 1
                cntn[x, node[g1]] += 1
    gpu[i] = g2
    gpu[j] = g1
    for q in range(na):
        _ep_contrib(affected[q], 1.0, data, s, gpu)
    s.top[0], s.top[1], s.top[2] = _move_load(s.load, w, i, j, g1, g2)
    return na * K * K * 2


# Deliberate duplicates: the best-improvement loops of ep_layer_search, ep_pair_search and coherent_search (and
# robust.py's _robust_layer / _robust_coherent) have the same shape with a different change and swap inside.
# numba inlines those (inline="always"); passing them in as first-class functions costs 2-3x in these loops.
@njit(cache=True)
def ep_layer_search(data, rules, costs, gpu, order, budget):
    """Improve one ep layer's assignment ``gpu`` in place (best partner for each item in turn); returns (the
    objective change its swaps predict, work done)."""
    X, K = data.types.shape
    P = gpu.shape[0]
    s = ep_sums(data, gpu, rules.w[0])
    node, tot, B, lone, C, BN, loneN, CN, load, top = data.node, s.tot, s.B, s.lone, s.C, s.BN, s.loneN, s.CN, s.load, s.top
    w, prev, nxt, step, cap = rules.w, rules.prev, rules.nxt, rules.step, rules.cap[0]
    gpu1, load1 = gpu.reshape(1, P), load.reshape(1, load.shape[0])  # the one layer as [1, .] rows
    cg, cn, cb = costs
    a, b, c = top[0], top[1], top[2]
    work = X * K * K
    change = 0.0
    improved = True
    while improved and work < budget:
        improved = False
        for oi in range(P):
            i = order[oi]
            g1 = gpu[i]
            best = -EPS
            bj = -1
            cur = load[a]
            for j in range(P):
                m = swap_max(0, 0, i, j, gpu1, prev, nxt, step, load1, w, cap, a, b, c)
                if m < 0.0:
                    continue
                d = ep_change(i, j, g1, gpu[j], m, cur, node, tot, B, lone, C, BN, loneN, CN, cg, cn, cb)
                if d < best:
                    best = d
                    bj = j
            work += P
            if bj < 0:
                continue
            work += ep_swap(data, s, gpu, w[0], i, bj)
            a, b, c = top[0], top[1], top[2]
            change += best
            improved = True
            if work >= budget:
                break
    return change, work


# -- ep: the pairwise surrogate -----------------------------------------------------------------------------

class PairSums(NamedTuple):
    """The pairwise surrogate's running sums: per item the pair weight towards each GPU and node, and the loads."""

    A: np.ndarray      # [P, G] tokens of item i with a partner on GPU g
    AN: np.ndarray     # [P, N]
    load: np.ndarray   # [G]
    top: np.ndarray    # [3]


@njit(cache=True)
def pair_sums(W, gpu, node, N, w):
    P = gpu.shape[0]
    G = node.shape[0]
    A = np.zeros((P, G))
    AN = np.zeros((P, N))
    for i in range(P):
        for k in range(P):
            if W[i, k] != 0.0:
                A[i, gpu[k]] += W[i, k]
                AN[i, node[gpu[k]]] += W[i, k]
    load = np.zeros(G)
    for i in range(P):
        load[gpu[i]] += w[i]
    top = np.empty(3, np.int64)
    top[0], top[1], top[2] = _top3(load)
    return PairSums(A, AN, load, top)


@njit(cache=True, inline="always")
def pair_change(i, j, g1, g2, m, cur, W, A, AN, node, cg, cn, cb):
    """The surrogate's change if items i (on g1) and j (on g2) swap, the largest load going from cur to m."""
    d = cb * (m - cur)
    d -= cg * (A[i, g2] - A[i, g1] + A[j, g1] - A[j, g2] - 2.0 * W[i, j])
    n1 = node[g1]
    n2 = node[g2]
    d -= cn * (AN[i, n2] - AN[i, n1] + AN[j, n1] - AN[j, n2] - 2.0 * W[i, j]) * (n1 != n2)
    return d


@njit(cache=True)
def pair_move(W, s, node, rules, costs, gpu, i, j):
    """The change ``ep_pair_search`` predicts for swapping items i and j, or nan if not allowed (for the tests)."""
    top = s.top
    m = swap_max(0, 0, i, j, gpu.reshape(1, -1), rules.prev, rules.nxt, rules.step, s.load.reshape(1, -1), rules.w,
                 rules.cap[0], top[0], top[1], top[2])
    if m < 0.0:
        return np.nan
    return pair_change(i, j, gpu[i], gpu[j], m, s.load[top[0]], W, s.A, s.AN, node, costs.cg, costs.cn, costs.cb)


@njit(cache=True)
def pair_swap(W, s, node, gpu, w, i, j):
    """Swap items i and j and update the surrogate's sums; returns the work done."""
    P = gpu.shape[0]
    A, AN = s.A, s.AN
    g1 = gpu[i]
    g2 = gpu[j]
    n1 = node[g1]
    n2 = node[g2]
    for k in range(P):
        dw = W[k, i] - W[k, j]
        if dw != 0.0:
            A[k, g1] -= dw
            A[k, g2] += dw
            if n1 != n2:
                AN[k, n1] -= dw
                AN[k, n2] += dw
    gpu[i] = g2
    gpu[j] = g1
    s.top[0], s.top[1], s.top[2] = _move_load(s.load, w, i, j, g1, g2)
    return P


@njit(cache=True)
def ep_pair_search(W, node, N, rules, costs, gpu, order, budget):
    """The same swaps judged by the pairwise surrogate (distinct GPUs ~ K - co-located pairs, per node
    likewise): O(P) per move, used to reach a good region fast; ``improve_ep`` keeps its result only if
    the exact objective agrees. Returns (the surrogate's change, work done)."""
    P = gpu.shape[0]
    s = pair_sums(W, gpu, node, N, rules.w[0])
    A, AN, load, top = s.A, s.AN, s.load, s.top
    w, prev, nxt, step, cap = rules.w, rules.prev, rules.nxt, rules.step, rules.cap[0]
    gpu1, load1 = gpu.reshape(1, P), load.reshape(1, load.shape[0])
    cg, cn, cb = costs
    a, b, c = top[0], top[1], top[2]
    work = P * P
    change = 0.0
    improved = True
    while improved and work < budget:
        improved = False
        for oi in range(P):
            i = order[oi]
            g1 = gpu[i]
            best = -EPS
            bj = -1
            cur = load[a]
            for j in range(P):
                m = swap_max(0, 0, i, j, gpu1, prev, nxt, step, load1, w, cap, a, b, c)
                if m < 0.0:
                    continue
                d = pair_change(i, j, g1, gpu[j], m, cur, W, A, AN, node, cg, cn, cb)
                if d < best:
                    best = d
                    bj = j
            work += P
            if bj < 0:
                continue
            work += pair_swap(W, s, node, gpu, w[0], i, bj)
            a, b, c = top[0], top[1], top[2]
            change += best
            improved = True
            if work >= budget:
                break
    return change, work


def layer_value(inst: Instance, l: int, row: np.ndarray) -> float:
    """ep: the objective of one layer."""
    g, n = ep_layer(inst, l, row) if inst.traffic else (0.0, 0.0)
    return inst.value(g, n, layer_loads(inst, l, row).max())


def csr_of(types: np.ndarray, P: int) -> tuple[np.ndarray, np.ndarray]:
    """For each item, the types holding it (CSR: ``ptr``, ``occ``)."""
    X, K = types.shape
    flat = types.ravel().astype(np.int64)
    order = np.argsort(flat, kind="stable")
    occ = (order // K).astype(np.int64)
    ptr = np.zeros(P + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=P), out=ptr[1:])
    return ptr, occ


def ep_data(inst: Instance, l: int, types: np.ndarray, cnt: np.ndarray) -> EpData:
    """The exact search's view of layer ``l``'s token types ``types`` [X, K] used by ``cnt`` tokens."""
    ptr, occ = csr_of(types, inst.P)
    return EpData(types, cnt, ptr, occ, inst.node_of_gpu.astype(np.int64), inst.N)


def _checked(kind: str, before: float, change: float, after: float) -> None:
    """With ``CHECK_CHANGES`` (the tests turn it on), the change a search's running sums predicted must be the
    change of the objective computed from scratch."""
    if CHECK_CHANGES:
        assert np.isclose(before + change, after, rtol=1e-9, atol=1e-6 * max(1.0, abs(before))), \
            f"internal error: {kind} predicted a change of {change}, the objective went from {before} to {after}"


def improve_ep(inst: Instance, gpu_LP: np.ndarray, budget: float, seed: int = 0,
               layers: list[int] | None = None, pair_first: bool = True) -> tuple[np.ndarray, int]:
    """Swap local search on every layer (or ``layers``; budget split evenly, unused work carried over);
    returns the new assignment and the work done."""
    gpu = gpu_LP.copy()
    prev_next = inst.prev_next_LP()
    rng = np.random.default_rng(seed)
    costs = costs_of(inst)
    node = inst.node_of_gpu.astype(np.int64)
    done = 0
    layers = list(range(inst.L)) if layers is None else layers
    for n, l in enumerate(layers):
        share = (budget - done) / (len(layers) - n)
        t = inst.types_L[l] if inst.traffic else None  # load-only statistics: balance alone
        keep = t is not None and t.items_XK.shape[1] > 1 and t.items_XK.shape[0] > 0
        types = t.items_XK.astype(np.int64) if keep else np.zeros((0, 2), np.int64)
        cnt = t.count_X if keep else np.zeros(0)
        sampled = types.shape[0] > SAMPLE_TYPES
        if sampled:
            # Large layers: the exact search works on a sample of token types (counts scaled to the
            # layer's tokens); what it finds is kept only if the whole layer's exact objective improves.
            pick = np.sort(np.random.default_rng(seed + 7919 * l).choice(types.shape[0], SAMPLE_TYPES,
                                                                         replace=False))
            cnt = cnt[pick] * (cnt.sum() / cnt[pick].sum())
            types = types[pick]
        rules = rules_of(inst, slice(l, l + 1), prev_next)
        order = rng.permutation(inst.P).astype(np.int64)
        rows = [gpu[l].astype(np.int64).copy()]
        if keep and pair_first:
            # Step 1: the pairwise surrogate from the start, cheaply (kept only if exactly better below).
            row = rows[0].copy()
            W = inst.pair_weights(l)
            change, work = ep_pair_search(W, node, inst.N, rules, costs, row, order, max(share / 4, 1.0))
            done += work
            if CHECK_CHANGES:
                _checked("the pairwise search", pair_value(W, rows[0], node, rules.w[0], costs), change,
                         pair_value(W, row, node, rules.w[0], costs))
            rows.append(row)
        # Step 2: exact swaps from each candidate; the best by the exact objective wins (never the start
        # unless nothing beats it).
        data = ep_data(inst, l, types, cnt)
        best_v, best_row = layer_value(inst, l, gpu[l]), gpu[l].copy()
        for row in rows:
            v0 = layer_value(inst, l, row) if CHECK_CHANGES and not sampled else None
            change, work = ep_layer_search(data, rules, costs, row, order,
                                           max((budget - done) / (len(layers) - n) / len(rows), 1.0))
            done += work
            v = layer_value(inst, l, row)
            if v0 is not None:
                _checked("the ep search", v0, change, v)
            if v < best_v - 1e-9:
                best_v, best_row = v, row
        gpu[l] = best_row
    return gpu, done


def pair_value(W: np.ndarray, gpu_P: np.ndarray, node: np.ndarray, w: np.ndarray, costs: Costs) -> float:
    """The pairwise surrogate's objective of one layer, up to a constant: the largest load, less the pair weight
    of items sharing a GPU (and a node)."""
    same_g = gpu_P[:, None] == gpu_P[None, :]
    same_n = node[gpu_P][:, None] == node[gpu_P][None, :]
    load = np.bincount(gpu_P, weights=w, minlength=len(node))
    return float(costs.cb * load.max() - costs.cg * (W * same_g).sum() / 2 - costs.cn * (W * same_n).sum() / 2)


# -- coherent: all layers -----------------------------------------------------------------------------------

class CoherentSums(NamedTuple):
    """The coherent search's running sums: the transitions of item i of layer l to the neighbouring layers' items
    on each GPU (``H``) and node (``HN``), and the loads."""

    H: np.ndarray      # [L, P, G]
    HN: np.ndarray     # [L, P, N]
    load: np.ndarray   # [L, G]
    top: np.ndarray    # [L, 3] each layer's three most loaded GPUs


@njit(cache=True)
def coherent_sums(trans, gpu, node, N, w):
    L, P = gpu.shape
    G = node.shape[0]
    H = np.zeros((L, P, G))
    HN = np.zeros((L, P, N))
    for l in range(L - 1):
        for i in range(P):
            for j in range(P):
                t = trans[l, i, j]
                if t != 0.0:
                    H[l, i, gpu[l + 1, j]] += t
                    H[l + 1, j, gpu[l, i]] += t
                    HN[l, i, node[gpu[l + 1, j]]] += t
                    HN[l + 1, j, node[gpu[l, i]]] += t
    load = np.zeros((L, G))
    top = np.empty((L, 3), np.int64)
    for l in range(L):
        for i in range(P):
            load[l, gpu[l, i]] += w[l, i]
        top[l, 0], top[l, 1], top[l, 2] = _top3(load[l])
    return CoherentSums(H, HN, load, top)


@njit(cache=True, inline="always")
def coherent_change(l, i, j, g1, g2, m, cur, H, HN, node, cg, cn, cb):
    """The change of the objective if items i (on g1) and j (on g2) of layer l swap, its largest load going from
    cur to m (``CoherentSums``' arrays as locals)."""
    d = cb * (m - cur)
    d += cg * (H[l, i, g1] - H[l, i, g2] + H[l, j, g2] - H[l, j, g1])
    n1 = node[g1]
    n2 = node[g2]
    d += cn * (HN[l, i, n1] - HN[l, i, n2] + HN[l, j, n2] - HN[l, j, n1]) * (n1 != n2)
    return d


@njit(cache=True)
def coherent_move(s, node, rules, costs, gpu, l, i, j):
    """The change ``coherent_search`` predicts for swapping items i and j of layer l, or nan if not allowed (for
    the tests)."""
    top = s.top[l]
    m = swap_max(l, l, i, j, gpu, rules.prev, rules.nxt, rules.step, s.load, rules.w, rules.cap[l], top[0], top[1],
                 top[2])
    if m < 0.0:
        return np.nan
    return coherent_change(l, i, j, gpu[l, i], gpu[l, j], m, s.load[l, top[0]], s.H, s.HN, node, costs.cg, costs.cn,
                           costs.cb)


@njit(cache=True)
def coherent_swap(trans, s, node, gpu, w, l, i, j):
    """Swap items i and j of layer l and update the neighbours' sums; returns the work done."""
    L, P = gpu.shape
    H, HN = s.H, s.HN
    g1 = gpu[l, i]
    g2 = gpu[l, j]
    n1 = node[g1]
    n2 = node[g2]
    # neighbours' sums: i leaves g1 for g2, j leaves g2 for g1
    if l + 1 < L:
        for k in range(P):
            d_i = trans[l, i, k]
            d_j = trans[l, j, k]
            if d_i != 0.0 or d_j != 0.0:
                H[l + 1, k, g1] += d_j - d_i
                H[l + 1, k, g2] += d_i - d_j
                HN[l + 1, k, n1] += d_j - d_i
                HN[l + 1, k, n2] += d_i - d_j
    if l > 0:
        for k in range(P):
            d_i = trans[l - 1, k, i]
            d_j = trans[l - 1, k, j]
            if d_i != 0.0 or d_j != 0.0:
                H[l - 1, k, g1] += d_j - d_i
                H[l - 1, k, g2] += d_i - d_j
                HN[l - 1, k, n1] += d_j - d_i
                HN[l - 1, k, n2] += d_i - d_j
    gpu[l, i] = g2
    gpu[l, j] = g1
    s.top[l, 0], s.top[l, 1], s.top[l, 2] = _move_load(s.load[l], w[l], i, j, g1, g2)
    return 2 * P


@njit(cache=True)
def coherent_search(trans, node, N, rules, costs, gpu, order, budget):
    """Improve a coherent assignment ``gpu`` [L, P] in place; returns (the objective change its swaps
    predict, work done)."""
    L, P = gpu.shape
    s = coherent_sums(trans, gpu, node, N, rules.w)
    H, HN, load = s.H, s.HN, s.load
    cg, cn, cb = costs
    w, prev, nxt, step = rules.w, rules.prev, rules.nxt, rules.step
    work = (L - 1) * P * P
    change = 0.0
    improved = True
    while improved and work < budget:
        improved = False
        for l in range(L):
            top = s.top[l]
            cap = rules.cap[l]
            a, b, c = top[0], top[1], top[2]
            for oi in range(P):
                i = order[l, oi]
                g1 = gpu[l, i]
                best = -EPS
                bj = -1
                cur = load[l, a]
                for j in range(P):
                    if gpu[l, j] == g1:  # (swap_max refuses it too; skipping it first is faster)
                        continue
                    m = swap_max(l, l, i, j, gpu, prev, nxt, step, load, w, cap, a, b, c)
                    if m < 0.0:
                        continue
                    d = coherent_change(l, i, j, g1, gpu[l, j], m, cur, H, HN, node, cg, cn, cb)
                    if d < best:
                        best = d
                        bj = j
                work += P
                if bj < 0:
                    continue
                work += coherent_swap(trans, s, node, gpu, rules.w, l, i, bj)
                a, b, c = top[0], top[1], top[2]
                change += best
                improved = True
                if work >= budget:
                    return change, work
    return change, work


def improve_coherent(inst: Instance, gpu_LP: np.ndarray, budget: float, seed: int = 0) -> tuple[np.ndarray, int]:
    gpu = gpu_LP.astype(np.int64).copy()
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(inst.P) for _ in range(inst.L)]).astype(np.int64)
    trans = inst.trans_LPP if inst.traffic and inst.L > 1 else np.zeros((max(inst.L - 1, 0), inst.P, inst.P))
    rules = rules_of(inst)
    before = terms(inst, gpu).value if CHECK_CHANGES else 0.0
    change, work = coherent_search(trans, inst.node_of_gpu.astype(np.int64), inst.N, rules, costs_of(inst), gpu,
                                   order, float(budget))
    if CHECK_CHANGES:
        _checked("the coherent search", before, change, terms(inst, gpu).value)
    return gpu, work


def improve(inst: Instance, gpu_LP: np.ndarray, budget: float, seed: int = 0,
            layers: list[int] | None = None, pair_first: bool = True) -> tuple[np.ndarray, int]:
    """Local search in the instance's mode (ep: only ``layers`` if given)."""
    if inst.decomposes:
        return improve_ep(inst, gpu_LP, budget, seed, layers, pair_first)
    return improve_coherent(inst, gpu_LP, budget, seed)
