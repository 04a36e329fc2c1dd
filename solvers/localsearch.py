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
O(1)) and the cap, which a move must respect. Copies of an expert stay in GPU order. Only improving moves
are taken (best partner for each item in turn), so the result is never worse than the start. Work is
counted in elementary updates and bounded, so results do not depend on the machine's speed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from solvers.assignment import distinct_of, ep_layer, layer_loads
from solvers.instance import Instance

EPS = 1e-9
SAMPLE_TYPES = 16384  # the exact ep search works on at most this many token types per layer


# -- ep: one layer ----------------------------------------------------------------------------------------

@njit(cache=True)
def _ep_contrib(x, sign, types, cnt, gpu, node, cntg, cntn, B, lone, C, BN, loneN, CN, tot, dg, dn):
    """Add (sign=1) or remove (-1) token type x's share of the running sums, for the current state."""
    K = types.shape[1]
    c = cnt[x] * sign
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
def _max_without(load, a, b, c, g1, g2):
    for t in (a, b, c):
        if t >= 0 and t != g1 and t != g2:
            return load[t]
    return -1e300


@njit(cache=True, inline="always")
def _swap_keeps_order(i, j, g1, g2, gpu, prev, nxt):
    """Swapping i (on g1) and j (on g2) keeps every expert's copies in GPU order (and never swaps two
    neighbouring copies of one expert)."""
    if j == prev[i] or j == nxt[i]:
        return False
    if prev[i] >= 0 and gpu[prev[i]] > g2:
        return False
    if nxt[i] >= 0 and gpu[nxt[i]] < g2:
        return False
    if prev[j] >= 0 and gpu[prev[j]] > g1:
        return False
    if nxt[j] >= 0 and gpu[nxt[j]] < g1:
        return False
    return True


@njit(cache=True, inline="always")
def _swap_max(load, w, i, j, g1, g2, a, b, c, cap):
    """The layer's largest load after swapping i (on g1) and j (on g2), or -1 if a GPU would exceed the cap."""
    l1 = load[g1] - w[i] + w[j]
    l2 = load[g2] - w[j] + w[i]
    if l1 > cap or l2 > cap:
        return -1.0
    m = _max_without(load, a, b, c, g1, g2)
    if l1 > m:
        m = l1
    if l2 > m:
        m = l2
    return m


@njit(cache=True)
def ep_layer_search(types, cnt, ptr, occ, gpu, node, G, N, w, cap, prev, nxt, cg, cn, cb, order, budget):
    """Improve one ep layer's assignment ``gpu`` in place; returns (objective change, work done)."""
    X, K = types.shape
    P = gpu.shape[0]
    cntg = np.zeros((X, G), np.int16)
    cntn = np.zeros((X, N), np.int16)
    for x in range(X):
        for k in range(K):
            g = gpu[types[x, k]]
            cntg[x, g] += 1
            cntn[x, node[g]] += 1
    dg = np.empty(K, np.int64)
    dn = np.empty(K, np.int64)
    B = np.zeros((P, G))
    lone = np.zeros(P)
    C = np.zeros((P, P))
    BN = np.zeros((P, N))
    loneN = np.zeros(P)
    CN = np.zeros((P, P))
    tot = np.zeros(P)
    for x in range(X):
        _ep_contrib(x, 1.0, types, cnt, gpu, node, cntg, cntn, B, lone, C, BN, loneN, CN, tot, dg, dn)
    load = np.zeros(G)
    for i in range(P):
        load[gpu[i]] += w[i]
    a, b, c = _top3(load)
    work = X * K * K
    change = 0.0
    stamp = np.zeros(X, np.int64)
    mark = 0
    affected = np.empty(X, np.int64)
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
                g2 = gpu[j]
                if g2 == g1 or not _swap_keeps_order(i, j, g1, g2, gpu, prev, nxt):
                    continue
                m = _swap_max(load, w, i, j, g1, g2, a, b, c, cap)
                if m < 0.0:
                    continue
                d = cb * (m - cur)
                if cg != 0.0:
                    d += cg * ((tot[i] - B[i, g2] - lone[i]) + (tot[j] - B[j, g1] - lone[j]) + C[i, j])
                n1 = node[g1]
                n2 = node[g2]
                if cn != 0.0 and n1 != n2:
                    d += cn * ((tot[i] - BN[i, n2] - loneN[i]) + (tot[j] - BN[j, n1] - loneN[j]) + CN[i, j])
                if d < best:
                    best = d
                    bj = j
            work += P
            if bj < 0:
                continue
            # apply the swap of i and bj
            j = bj
            g2 = gpu[j]
            mark += 1
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
                _ep_contrib(affected[q], -1.0, types, cnt, gpu, node, cntg, cntn, B, lone, C, BN, loneN, CN, tot, dg, dn)
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
                _ep_contrib(affected[q], 1.0, types, cnt, gpu, node, cntg, cntn, B, lone, C, BN, loneN, CN, tot, dg, dn)
            load[g1] += w[j] - w[i]
            load[g2] += w[i] - w[j]
            a, b, c = _top3(load)
            work += na * K * K * 2
            change += best
            improved = True
            if work >= budget:
                break
    return change, work


@njit(cache=True)
def ep_pair_search(W, gpu, node, G, N, w, cap, prev, nxt, cg, cn, cb, order, budget):
    """The same swaps judged by the pairwise surrogate (distinct GPUs ~ K - co-located pairs, per node
    likewise): O(P) per move, used to reach a good region fast; ``improve_ep`` keeps its result only if
    the exact objective agrees. Returns the work done."""
    P = gpu.shape[0]
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
    a, b, c = _top3(load)
    work = P * P
    improved = True
    while improved and work < budget:
        improved = False
        for oi in range(P):
            i = order[oi]
            g1 = gpu[i]
            n1 = node[g1]
            best = -EPS
            bj = -1
            cur = load[a]
            for j in range(P):
                g2 = gpu[j]
                if g2 == g1 or not _swap_keeps_order(i, j, g1, g2, gpu, prev, nxt):
                    continue
                m = _swap_max(load, w, i, j, g1, g2, a, b, c, cap)
                if m < 0.0:
                    continue
                d = cb * (m - cur)
                d -= cg * (A[i, g2] - A[i, g1] + A[j, g1] - A[j, g2] - 2.0 * W[i, j])
                n2 = node[g2]
                if n1 != n2:
                    d -= cn * (AN[i, n2] - AN[i, n1] + AN[j, n1] - AN[j, n2] - 2.0 * W[i, j])
                if d < best:
                    best = d
                    bj = j
            work += P
            if bj < 0:
                continue
            j = bj
            g2 = gpu[j]
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
            load[g1] += w[j] - w[i]
            load[g2] += w[i] - w[j]
            a, b, c = _top3(load)
            work += P
            improved = True
            if work >= budget:
                break
    return work


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


def improve_ep(inst: Instance, gpu_LP: np.ndarray, budget: float, seed: int = 0,
               layers: list[int] | None = None, pair_first: bool = True) -> tuple[np.ndarray, int]:
    """Swap local search on every layer (or ``layers``; budget split evenly, unused work carried over);
    returns the new assignment and the work done."""
    gpu = gpu_LP.copy()
    prev, nxt = inst.prev_next_LP()
    rng = np.random.default_rng(seed)
    node = inst.node_of_gpu.astype(np.int64)
    done = 0
    layers = list(range(inst.L)) if layers is None else layers
    for n, l in enumerate(layers):
        share = (budget - done) / (len(layers) - n)
        t = inst.types_L[l] if inst.traffic else None  # load-only statistics: balance alone
        keep = t is not None and t.items_XK.shape[1] > 1 and t.items_XK.shape[0] > 0
        types = t.items_XK.astype(np.int64) if keep else np.zeros((0, 2), np.int64)
        cnt = t.count_X if keep else np.zeros(0)
        if types.shape[0] > SAMPLE_TYPES:
            # Large layers: the exact search works on a sample of token types (counts scaled to the
            # layer's tokens); what it finds is kept only if the whole layer's exact objective improves.
            pick = np.sort(np.random.default_rng(seed + 7919 * l).choice(types.shape[0], SAMPLE_TYPES,
                                                                         replace=False))
            cnt = cnt[pick] * (cnt.sum() / cnt[pick].sum())
            types = types[pick]
        cap = inst.cap_L[l] * (1 + 1e-12) if np.isfinite(inst.cap_L[l]) else 1e300
        order = rng.permutation(inst.P).astype(np.int64)
        w = inst.load_LP[l].astype(np.float64)
        cg = inst.c_gpu if inst.traffic else 0.0
        cn = inst.c_node if inst.traffic else 0.0
        rows = [gpu[l].astype(np.int64).copy()]
        if keep and pair_first:
            # Step 1: the pairwise surrogate from the start, cheaply (kept only if exactly better below).
            row = rows[0].copy()
            done += ep_pair_search(inst.pair_weights(l), row, node, inst.G, inst.N, w, cap, prev[l], nxt[l],
                                   cg, cn, inst.c_bal, order, max(share / 4, 1.0))
            rows.append(row)
        # Step 2: exact swaps from each candidate; the best by the exact objective wins (never the start
        # unless nothing beats it).
        ptr, occ = csr_of(types, inst.P)
        best_v, best_row = layer_value(inst, l, gpu[l]), gpu[l].copy()
        for row in rows:
            _, work = ep_layer_search(types, cnt, ptr, occ, row, node, inst.G, inst.N, w, cap, prev[l], nxt[l],
                                      cg, cn, inst.c_bal, order, max((budget - done) / (len(layers) - n)
                                                                    / len(rows), 1.0))
            done += work
            v = layer_value(inst, l, row)
            if v < best_v - 1e-9:
                best_v, best_row = v, row
        gpu[l] = best_row
    return gpu, done


# -- coherent: all layers -----------------------------------------------------------------------------------

@njit(cache=True)
def coherent_search(trans, gpu, node, G, N, w, cap, prev, nxt, cg, cn, cb, order, budget):
    """Improve a coherent assignment ``gpu`` [L, P] in place; returns (objective change, work done)."""
    L, P = gpu.shape
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
    for l in range(L):
        for i in range(P):
            load[l, gpu[l, i]] += w[l, i]
    work = (L - 1) * P * P
    change = 0.0
    improved = True
    while improved and work < budget:
        improved = False
        for l in range(L):
            a, b, c = _top3(load[l])
            for oi in range(P):
                i = order[l, oi]
                g1 = gpu[l, i]
                best = -EPS
                bj = -1
                cur = load[l, a]
                for j in range(P):
                    g2 = gpu[l, j]
                    # (the checks of _swap_keeps_order and _swap_max, written out: calls with row views
                    # made this loop four times slower)
                    if g2 == g1 or j == prev[l, i] or j == nxt[l, i]:
                        continue
                    if prev[l, i] >= 0 and gpu[l, prev[l, i]] > g2 or nxt[l, i] >= 0 and gpu[l, nxt[l, i]] < g2:
                        continue
                    if prev[l, j] >= 0 and gpu[l, prev[l, j]] > g1 or nxt[l, j] >= 0 and gpu[l, nxt[l, j]] < g1:
                        continue
                    l1 = load[l, g1] - w[l, i] + w[l, j]
                    l2 = load[l, g2] - w[l, j] + w[l, i]
                    if l1 > cap[l] or l2 > cap[l]:
                        continue
                    m = max(_max_without(load[l], a, b, c, g1, g2), l1, l2)
                    d = cb * (m - cur)
                    d += cg * (H[l, i, g1] - H[l, i, g2] + H[l, j, g2] - H[l, j, g1])
                    n1 = node[g1]
                    n2 = node[g2]
                    if n1 != n2:
                        d += cn * (HN[l, i, n1] - HN[l, i, n2] + HN[l, j, n2] - HN[l, j, n1])
                    if d < best:
                        best = d
                        bj = j
                work += P
                if bj < 0:
                    continue
                j = bj
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
                load[l, g1] += w[l, j] - w[l, i]
                load[l, g2] += w[l, i] - w[l, j]
                a, b, c = _top3(load[l])
                work += 2 * P
                change += best
                improved = True
                if work >= budget:
                    return change, work
    return change, work


def improve_coherent(inst: Instance, gpu_LP: np.ndarray, budget: float, seed: int = 0) -> tuple[np.ndarray, int]:
    gpu = gpu_LP.astype(np.int64).copy()
    prev, nxt = inst.prev_next_LP()
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(inst.P) for _ in range(inst.L)]).astype(np.int64)
    cap = np.where(np.isfinite(inst.cap_L), inst.cap_L * (1 + 1e-12), 1e300)
    trans = inst.trans_LPP if inst.traffic and inst.L > 1 else np.zeros((max(inst.L - 1, 0), inst.P, inst.P))
    _, work = coherent_search(trans, gpu, inst.node_of_gpu.astype(np.int64), inst.G, inst.N,
                              inst.load_LP.astype(np.float64), cap, prev, nxt,
                              inst.c_gpu if inst.traffic else 0.0, inst.c_node if inst.traffic else 0.0,
                              inst.c_bal, order, float(budget))
    return gpu, work


def improve(inst: Instance, gpu_LP: np.ndarray, budget: float, seed: int = 0,
            layers: list[int] | None = None, pair_first: bool = True) -> tuple[np.ndarray, int]:
    """Local search in the instance's mode (ep: only ``layers`` if given)."""
    if inst.decomposes:
        return improve_ep(inst, gpu_LP, budget, seed, layers, pair_first)
    return improve_coherent(inst, gpu_LP, budget, seed)
