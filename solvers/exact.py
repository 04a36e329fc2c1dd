"""Exact methods that exploit the structure of the problem (used by ``auto`` on small instances).

Identical GPUs in one node are interchangeable, so a layer's placement matters only up to renaming its
GPUs: what counts is the **partition** of its items into G blocks of s = P/G (P! / (s!^G G!) of them, 105
for 8 experts on 4 GPUs).

- ``ep`` decomposes by layer: each layer's optimum is the best of its partitions (enumerated), and the sum
  of the layers' optima is the optimum.
- ``coherent`` couples only adjacent layers, and the cost of a pair of layers depends on their two
  partitions and on which block of layer l+1 shares a GPU with which block of layer l: a bijection that
  can be chosen freely for every pair (rename layer l+1's GPUs). So the optimum is a shortest path over
  layers whose states are partitions, with the best bijection on each arc (dynamic programming). With one
  item per GPU there is one partition and the chain decouples into one max-weight assignment per pair
  of layers (OR-Tools' linear sum assignment).

All three need one node and no redundant copies (copies must keep GPU order, which renaming breaks). They
are tried only when their enumeration fits the time limit and memory (``affordable``), and they stop at a
wall-clock deadline (then ``auto`` goes on with its heuristic steps, without claiming optimality).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from ortools.graph.python import linear_sum_assignment

from solvers.assignment import Outcome
from solvers.common import WallGuard
from solvers.instance import Instance

MAX_WORK = 3e7  # the largest enumeration (partitions x types, partition pairs x bijections) attempted
# The partitions are listed by a Python recursion: about 40,000-60,000 a second on the project's 2-core
# reference machine under load (measured: 2.6M partitions of 16 items on 4 GPUs in 42 s), 8 bytes per item
# each. An enumeration is attempted only if listing them takes at most EXACT_SHARE of the time limit at that
# rate and their array at most MAX_PARTITION_BYTES.
PARTITIONS_PER_SECOND = 4e4
EXACT_SHARE = 0.25
MAX_PARTITION_BYTES = 256e6


def num_partitions(P: int, G: int) -> int:
    s = P // G
    return math.factorial(P) // (math.factorial(s) ** G * math.factorial(G))


def affordable(P: int, G: int, time_limit_s: float) -> bool:
    """Listing every partition of P items on G GPUs fits EXACT_SHARE of the time limit and the memory cap."""
    n = num_partitions(P, G)
    return n / PARTITIONS_PER_SECOND <= EXACT_SHARE * time_limit_s and n * P * 8 <= MAX_PARTITION_BYTES


class Stopped(Exception):
    """The wall-clock deadline passed during an enumeration."""


def partitions(P: int, G: int, wall: WallGuard | None = None) -> np.ndarray:
    """[n, P] every partition of P items into G unlabeled blocks of P/G, as block labels numbered by
    their smallest item. Raises ``Stopped`` if ``wall`` fires first."""
    s = P // G
    labels = np.full(P, -1, dtype=np.int64)
    out: list[np.ndarray] = []

    def rec(block: int) -> None:
        free = np.nonzero(labels < 0)[0]
        if free.size == 0:
            out.append(labels.copy())
            if wall is not None and len(out) % 4096 == 0 and wall.over():
                raise Stopped
            return
        first = free[0]
        for comb in itertools.combinations(free[1:].tolist(), s - 1):
            labels[first] = block
            labels[list(comb)] = block
            rec(block + 1)
            labels[first] = -1
            labels[list(comb)] = -1

    rec(0)
    return np.array(out, dtype=np.int64).reshape(-1, P)


def applicable(inst: Instance, time_limit_s: float = math.inf) -> str | None:
    """Which exact method fits this instance and the time limit (None: none does)."""
    if inst.N != 1 or inst.redundant or not inst.exact:
        return None
    if inst.s > 1 and not affordable(inst.P, inst.G, time_limit_s):
        return None
    n = num_partitions(inst.P, inst.G)
    if inst.decomposes:
        X = max((t.items_XK.shape[0] for t in inst.types_L), default=1) if inst.traffic else 1
        return "enumerate" if n * max(X, 1) * inst.K <= MAX_WORK else None
    if inst.s == 1:
        return "assignment"
    bij = math.factorial(inst.G) if inst.G <= 6 else None
    return "dp" if bij is not None and n * n * bij * inst.G <= MAX_WORK else None


def _block_loads(inst: Instance, l: int, parts: np.ndarray) -> np.ndarray:
    """[n] largest block load of each partition."""
    loads = np.zeros((parts.shape[0], inst.G))
    np.add.at(loads, (np.arange(parts.shape[0])[:, None], parts), inst.load_LP[l][None, :])
    return loads.max(axis=1)


def best_partition(inst: Instance, l: int, parts: np.ndarray) -> np.ndarray:
    """ep: layer l's best partition among ``parts`` (traffic + balance, within the cap), as GPU labels."""
    maxload = _block_loads(inst, l, parts)
    cost = inst.c_bal * maxload
    if inst.traffic:
        t = inst.types_L[l]
        if t.items_XK.shape[0]:
            b = np.sort(parts[:, t.items_XK], axis=2)                       # [n, X, K]
            distinct = 1 + (np.diff(b, axis=2) != 0).sum(axis=2)
            cost = cost + inst.c_gpu * (distinct @ t.count_X)
    cost[maxload > inst.cap_L[l] * (1 + 1e-9)] = np.inf
    return parts[int(np.argmin(cost))]


def solve_assignment(inst: Instance) -> Outcome:
    """One item per GPU: layer 0 in item order, then for every pair of layers the bijection that keeps the
    most transitions on one GPU (max-weight assignment)."""
    P = inst.P
    gpu = np.empty((inst.L, P), dtype=np.int64)
    gpu[0] = np.arange(P)
    for l in range(inst.L - 1):
        tr = inst.trans_LPP[l]
        scale = 1.0 if np.allclose(tr, np.round(tr)) else 1000.0
        a = linear_sum_assignment.SimpleLinearSumAssignment()
        ii, jj = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
        a.add_arcs_with_cost(ii.ravel(), jj.ravel(), (-np.round(tr * scale)).astype(np.int64).ravel())
        assert a.solve() == a.OPTIMAL
        match = np.array([a.right_mate(i) for i in range(P)])
        gpu[l + 1, match] = gpu[l]
    return Outcome(gpu, proven=True, extra={"method": "exact: max-weight assignment per pair of layers"})


def solve_dp(inst: Instance, wall: WallGuard) -> Outcome | None:
    """Shortest path over layers, states = partitions within the cap, arcs = best bijection of blocks (None
    if ``wall`` fires first)."""
    try:
        parts = partitions(inst.P, inst.G, wall)
    except Stopped:
        return None
    n, G = parts.shape[0], inst.G
    perms = np.array(list(itertools.permutations(range(G))), dtype=np.int64)      # [B, G]
    onehot = np.zeros((n, G, inst.P))
    onehot[np.arange(n)[:, None], parts, np.arange(inst.P)[None, :]] = 1.0
    state = []
    for l in range(inst.L):
        maxload = _block_loads(inst, l, parts)
        c = inst.c_bal * maxload
        c[maxload > inst.cap_L[l] * (1 + 1e-9)] = np.inf
        state.append(c)
    best = state[0].copy()
    back_p, back_b = [], []
    for l in range(inst.L - 1):
        if wall.over():
            return None
        tr = inst.trans_LPP[l]
        W = np.einsum("pbi,ij,qcj->pqbc", onehot, tr, onehot, optimize=True)         # [n, n, G, G]
        kept = W[:, :, np.arange(G)[None, :], perms].sum(axis=3)                      # [n, n, B]
        bij = kept.argmax(axis=2)
        arc = inst.c_gpu * (tr.sum() - kept.max(axis=2))                              # [n, n]
        total = best[:, None] + arc
        prev = total.argmin(axis=0)
        best = total[prev, np.arange(n)] + state[l + 1]
        back_p.append(prev)
        back_b.append(bij[prev, np.arange(n)])
    # Walk back: block b of layer l sits on GPU lab[b]; block perm[b] of layer l+1 joins it.
    q = int(np.argmin(best))
    chain = [q]
    bijs = []
    for l in range(inst.L - 2, -1, -1):
        p = int(back_p[l][chain[-1]])
        bijs.append(perms[back_b[l][chain[-1]]])
        chain.append(p)
    chain.reverse()
    bijs.reverse()
    gpu = np.empty((inst.L, inst.P), dtype=np.int64)
    lab = np.arange(G)
    gpu[0] = lab[parts[chain[0]]]
    for l in range(inst.L - 1):
        nxt = np.empty(G, dtype=np.int64)
        nxt[bijs[l]] = lab
        lab = nxt
        gpu[l + 1] = lab[parts[chain[l + 1]]]
    return Outcome(gpu, proven=True, extra={"method": f"exact: dynamic programming over {n} partitions per layer"})


def solve(inst: Instance, time_limit_s: float = math.inf, wall: WallGuard | None = None) -> Outcome | None:
    """The exact method that fits the instance and the time limit (``applicable``), or None (none fits, or
    ``wall`` fired first). ``auto`` enumerates ep layers inside its per-layer search (``best_partition``)."""
    wall = WallGuard(math.inf) if wall is None else wall
    method = applicable(inst, time_limit_s)
    try:
        if method == "enumerate" and inst.decomposes:
            parts = partitions(inst.P, inst.G, wall)
            gpu = np.stack([best_partition(inst, l, parts) for l in range(inst.L)])
            return Outcome(gpu, proven=True, extra={"method": "exact: best partition of every layer"})
    except Stopped:
        return None
    if method == "assignment":
        return solve_assignment(inst)
    if method == "dp":
        return solve_dp(inst, wall)
    return None
