"""``rebalance``: a new placement for new traffic that moves at most a budget of expert copies from the current one.

Re-solving from scratch moves almost every copy (weights that must travel); most of the gain usually comes from a
few hot experts. So:

1. **Target.** A full re-solve of the problem (any registered solver, ``auto`` by default), aligned to CURRENT
   (``placer.core.moves.align``): its GPUs renamed so that it shares as many copies with CURRENT as it can.
2. **Steps towards it, best first.** From CURRENT, a step either sets one slot to the target's expert (an expert
   gains a copy, another loses one, never its last) or exchanges the experts of two slots on different GPUs (one of
   them ends where the target has it). A step costs the copies it loads onto a GPU that does not hold them yet: 0, 1
   or 2 moves. Steps are judged by the objective's expectation under the even split of an expert's tokens among
   its copies (the largest GPU load of the layer, and the co-located expert pairs of ``ep`` or the transitions kept
   on a GPU of ``coherent``, on GPUs and on nodes, weighted as the project objective weighs them), and taken
   greedily: free improving steps first, then the largest gain per move, while the budget allows (per layer and in
   total). The greedy stops when no step improves.
3. **Report.** The placement keeps CURRENT's GPU names; its exact project objective is measured on the problem
   (``assignment.judge``), with the moves and the objective after each budget on the way (the Pareto front that
   ``--pareto`` plots). No bound is claimed: the budget makes this a different problem from the full solve.

A budget of 0 returns CURRENT unchanged. With scenarios, steps are judged on the scenarios' mean (each scenario
normalised by its tokens) and the result is reported on every scenario.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from placer.core.mode import TrafficMode
from placer.core.moves import align, check_same_shape, count_moves
from placer.core.placement import Placement, SolveStatus
from solvers.assignment import judge
from solvers.instance import build_instance
from solvers.problem import PlacementProblem, SolveOptions

EPS = 1e-9


@dataclass
class Budget:
    """At most ``per_layer`` moves in any layer and ``total`` in all (None: no limit)."""

    per_layer: int | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_layer", "total"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
                raise ValueError(f"the move budget {name.replace('_', ' ')} must be a whole number >= 0, got {v!r}")

    @property
    def zero(self) -> bool:
        return self.per_layer == 0 or self.total == 0


@njit(cache=True)
def _apply(gpus, experts, dn, n_GE, cnt_E, node_G, w_E, load_G, F_GE, FN_NE, C_EE, cg, cn, commit):
    """The change of the layer's surrogate objective terms when ``n_GE[gpus[k], experts[k]] += dn[k]`` for every k
    (the copy counts follow): returns (change of the saved traffic on GPUs, on nodes, the new largest GPU load);
    with ``commit`` the state is updated too. ``F_GE`` / ``FN_NE``: the affinity each GPU / node offers an
    expert's share (``C_EE``: the same layer's pairwise affinity, for the ep self term; empty for coherent)."""
    K = gpus.shape[0]
    G, E = n_GE.shape
    N = FN_NE.shape[0]
    # Step 1: the experts whose copies change, and their counts before and after.
    ex = np.empty(K, np.int64)
    ne = 0
    for k in range(K):
        found = False
        for j in range(ne):
            if ex[j] == experts[k]:
                found = True
        if not found:
            ex[ne] = experts[k]
            ne += 1
    cnt_new = np.empty(ne, np.int64)
    for j in range(ne):
        c = cnt_E[ex[j]]
        for k in range(K):
            if experts[k] == ex[j]:
                c += dn[k]
        cnt_new[j] = c
    # Step 2: every share that changes (GPU h, expert j): n / cnt before and after.
    new_load = load_G.copy()
    d_gpu = 0.0
    d_node = 0.0
    dsh = np.zeros((G, ne))
    dnode = np.zeros((N, ne))
    for j in range(ne):
        e = ex[j]
        for h in range(G):
            n_old = n_GE[h, e]
            n_new = n_old
            for k in range(K):
                if gpus[k] == h and experts[k] == e:
                    n_new += dn[k]
            if n_old == 0 and n_new == 0:
                continue
            d = n_new / cnt_new[j] - n_old / cnt_E[e]
            dsh[h, j] = d
            dnode[node_G[h], j] += d
            new_load[h] += w_E[e] * d
            d_gpu += d * F_GE[h, e]
    for n in range(N):
        for j in range(ne):
            d_node += dnode[n, j] * FN_NE[n, ex[j]]
    # Step 3 (ep): the pairs of changed experts on one GPU / node (the quadratic term of the same layer).
    if C_EE.shape[0] > 0:
        for i in range(ne):
            for j in range(i + 1, ne):
                c = C_EE[ex[i], ex[j]]
                if c != 0.0:
                    for h in range(G):
                        d_gpu += dsh[h, i] * dsh[h, j] * c
                    for n in range(N):
                        d_node += dnode[n, i] * dnode[n, j] * c
    new_max = new_load.max()
    if commit:
        for k in range(K):
            n_GE[gpus[k], experts[k]] += dn[k]
        for j in range(ne):
            cnt_E[ex[j]] = cnt_new[j]
        load_G[:] = new_load
        if C_EE.shape[0] > 0:  # ep: the same layer's affinity follows its own shares
            for j in range(ne):
                for h in range(G):
                    if dsh[h, j] != 0.0:
                        for f in range(E):
                            F_GE[h, f] += dsh[h, j] * C_EE[ex[j], f]
                for n in range(N):
                    if dnode[n, j] != 0.0:
                        for f in range(E):
                            FN_NE[n, f] += dnode[n, j] * C_EE[ex[j], f]
    return d_gpu, d_node, new_max


@dataclass
class _Layer:
    """One layer's state: slots, copies per GPU, loads, and the affinity fields of the surrogate."""

    row: np.ndarray                 # [P] expert of each slot
    n_GE: np.ndarray                # [G, E] copies of each expert on each GPU
    cnt_E: np.ndarray               # [E]
    w_E: np.ndarray                 # [E] load
    load_G: np.ndarray              # [G]
    F_GE: np.ndarray                # [G, E] affinity a GPU offers each expert's share
    FN_NE: np.ndarray               # [N, E] the same per node
    C_EE: np.ndarray                # ep: [E, E] pairwise affinity; coherent: [0, 0]
    moves: int = 0
    cands: list = field(default_factory=list)


class Rebalancer:
    """The greedy of the module docstring, on a problem (its scenarios' mean) from CURRENT towards a target."""

    def __init__(self, problems: list[PlacementProblem], weights_s: np.ndarray, current: Placement,
                 target: Placement, options: SolveOptions) -> None:
        base = problems[0]
        self.current, self.target = current, align(current, target)
        G, E, N, P = current.num_gpus, current.num_experts, current.num_nodes, current.num_slots
        self.G, self.E, self.N, self.P, self.L = G, E, N, P, current.num_layers
        self.gpu_of_slot = current.gpu_of_slot()
        self.node_G = (np.arange(G) // (G // N)).astype(np.int64)
        self.mode = base.mode
        inst = build_instance(base, SolveOptions(params={**options.params, "max_imbalance": 0}))
        self.cb, self.cg, self.cn = inst.c_bal, inst.c_gpu, inst.c_node
        # The scenarios' mean, each normalised by its tokens (weights_s).
        w_LE = sum(ws * p.load_LE for ws, p in zip(weights_s, problems))
        traffic = all(p.coact_LEE is not None and p.trans_LEE is not None for p in problems) and self.cg + self.cn > 0
        self.coact = self.trans = None
        if traffic and self.mode is TrafficMode.EP:
            self.coact = sum(ws * np.asarray(p.coact_LEE, dtype=np.float64) for ws, p in zip(weights_s, problems))
            self.coact[:, np.arange(E), np.arange(E)] = 0.0
        elif traffic and self.L > 1:
            self.trans = sum(ws * np.asarray(p.trans_LEE, dtype=np.float64) for ws, p in zip(weights_s, problems))
        self.layers = [self._layer(l, w_LE[l]) for l in range(self.L)]
        if self.trans is not None:
            for l in range(self.L):
                self._coherent_fields(l)

    def _layer(self, l: int, w_E: np.ndarray) -> _Layer:
        row = self.current.phy2log_LP[l].copy()
        n = np.zeros((self.G, self.E), dtype=np.int64)
        np.add.at(n, (self.gpu_of_slot, row), 1)
        cnt = n.sum(axis=0)
        share = n / cnt
        C = self.coact[l] if self.coact is not None else np.zeros((0, 0))
        F = share @ C if C.size else np.zeros((self.G, self.E))
        FN = np.zeros((self.N, self.E))
        if C.size:
            np.add.at(FN, self.node_G, F)
        return _Layer(row, n, cnt, np.asarray(w_E, dtype=np.float64), share @ w_E, F, FN, C)

    def _coherent_fields(self, l: int) -> None:
        """coherent: the transitions the neighbouring layers' shares offer layer l's experts, per GPU and node."""
        lay = self.layers[l]
        F = np.zeros((self.G, self.E))
        if l + 1 < self.L:
            nxt = self.layers[l + 1]
            F += (nxt.n_GE / nxt.cnt_E) @ self.trans[l].T
        if l > 0:
            prv = self.layers[l - 1]
            F += (prv.n_GE / prv.cnt_E) @ self.trans[l - 1]
        lay.F_GE = F
        lay.FN_NE = np.zeros((self.N, self.E))
        np.add.at(lay.FN_NE, self.node_G, F)

    # -- steps -------------------------------------------------------------------------------------------
    def _step_changes(self, l: int, p: int, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(GPUs, experts, copy changes, moves) of setting slot p to the target (q < 0) or exchanging p and q."""
        lay, g = self.layers[l], self.gpu_of_slot[p]
        a = lay.row[p]
        if q < 0:
            b = self.target.phy2log_LP[l, p]
            moves = int(lay.n_GE[g, b] == 0)
            return np.array([g, g]), np.array([a, b]), np.array([-1, 1]), moves
        h, b = self.gpu_of_slot[q], lay.row[q]
        moves = int(lay.n_GE[g, b] == 0) + int(lay.n_GE[h, a] == 0)
        return np.array([g, g, h, h]), np.array([a, b, b, a]), np.array([-1, 1, -1, 1]), moves

    def _gain(self, l: int, p: int, q: int, commit: bool = False) -> tuple[float, int]:
        lay = self.layers[l]
        gpus, experts, dn, moves = self._step_changes(l, p, q)
        old_max = lay.load_G.max()
        d_gpu, d_node, new_max = _apply(gpus, experts, dn, lay.n_GE, lay.cnt_E, self.node_G, lay.w_E, lay.load_G,
                                        lay.F_GE, lay.FN_NE, lay.C_EE, self.cg, self.cn, commit)
        gain = self.cb * (old_max - new_max) + self.cg * d_gpu + self.cn * d_node
        return gain, moves

    def _candidates(self, l: int) -> list[tuple[float, int, int, int]]:
        """Layer l's improving steps as (gain, moves, p, q), best gain per move first."""
        lay, tgt = self.layers[l], self.target.phy2log_LP[l]
        out = []
        for p in np.nonzero(lay.row != tgt)[0]:
            p = int(p)
            if lay.cnt_E[lay.row[p]] > 1:
                gain, moves = self._gain(l, p, -1)
                if gain > EPS:
                    out.append((gain, moves, p, -1))
            for q in np.nonzero((lay.row == tgt[p]) & (self.gpu_of_slot != self.gpu_of_slot[p]))[0]:
                gain, moves = self._gain(l, p, int(q))
                if gain > EPS:
                    out.append((gain, moves, p, int(q)))
        return out

    def run(self, budget: Budget, record: list[int] | None = None) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """The rows after the greedy within ``budget``; with ``record`` (move counts), the rows as they stood when
        the moves first reached each count, for the Pareto front."""
        snapshots: list[tuple[int, np.ndarray]] = []
        pending = sorted(record or [])
        heap: list[tuple[float, int, int, int, int, int]] = []
        stamp = [0] * self.L
        total = 0

        def push(l: int) -> None:
            stamp[l] += 1
            for gain, moves, p, q in self._candidates(l):
                key = -np.inf if moves == 0 else -gain / moves
                heapq.heappush(heap, (key, -gain, l, stamp[l], p, q))

        def rows() -> np.ndarray:
            return np.stack([lay.row for lay in self.layers])

        for l in range(self.L):
            push(l)
        while heap:
            _, _, l, st, p, q = heapq.heappop(heap)
            if st != stamp[l]:
                continue  # the layer changed since: its steps were judged again
            gain, moves = self._gain(l, p, q)
            if gain <= EPS:
                continue
            layer_left = None if budget.per_layer is None else budget.per_layer - self.layers[l].moves
            total_left = None if budget.total is None else budget.total - total
            if moves and ((layer_left is not None and moves > layer_left) or (total_left is not None and moves > total_left)):
                continue
            while pending and total + moves > pending[0]:
                snapshots.append((pending.pop(0), rows()))
            self._gain(l, p, q, commit=True)
            lay = self.layers[l]
            if q < 0:
                lay.row[p] = self.target.phy2log_LP[l, p]
            else:
                lay.row[p], lay.row[q] = lay.row[q], lay.row[p]
            lay.moves += moves
            total += moves
            if self.trans is not None:
                for k in (l - 1, l + 1):
                    if 0 <= k < self.L:
                        self._coherent_fields(k)
                        push(k)
            push(l)
        for count in pending:
            snapshots.append((count, rows()))
        return rows(), snapshots


def rebalance(problems: list[PlacementProblem], current: Placement, target: Placement, budget: Budget,
              options: SolveOptions, weights_s: np.ndarray | None = None,
              pareto: list[int] | None = None) -> Placement:
    """The rebalanced placement of ``problems`` (one, or the scenarios, judged on their mean with ``weights_s``,
    default equal) from ``current`` towards ``target`` within ``budget``. With ``pareto`` (move counts), the
    report's ``extra["pareto"]`` holds the objective after each count of moves of the unbudgeted greedy, then the
    target's (the full re-solve)."""
    start = time.perf_counter()
    check_same_shape(current, target)
    problem = problems[0]
    if (problem.num_layers, problem.num_experts, problem.num_slots) != (current.num_layers, current.num_experts,
                                                                         current.num_slots):
        raise ValueError(f"the current placement has {current.num_layers} layers x {current.num_experts} experts "
                         f"in {current.num_slots} slots, the input {problem.num_layers} x {problem.num_experts} in "
                         f"{problem.num_slots}")
    weights_s = np.full(len(problems), 1.0 / len(problems)) if weights_s is None else np.asarray(weights_s)

    def objective(p: Placement) -> float:
        return _objective(problems, weights_s, options, p)

    # Step 1: the greedy within the budget (nothing at all with a budget of 0).
    if budget.zero:
        rows = current.phy2log_LP.copy()
    else:
        rows, _ = Rebalancer(problems, weights_s, current, target, options).run(budget)
    placement = current.with_(phy2log_LP=rows, topology=problem.topology)
    aligned = align(current, target)
    extra: dict[str, Any] = {
        "moves": count_moves(current, placement).to_dict(),
        "budget": {"per_layer": budget.per_layer, "total": budget.total},
        "current_objective": objective(current),
        "target": {"solver": target.report.solver, "moves": count_moves(current, aligned).total,
                   "objective": objective(aligned)},
    }
    # Step 2: the front: the same greedy without a budget, cut at each count of moves, then the full re-solve.
    if pareto:
        _, snaps = Rebalancer(problems, weights_s, current, target, options).run(Budget(), record=pareto)
        extra["pareto"] = [{"budget": count, "moves": count_moves(current, current.with_(phy2log_LP=snap)).total,
                            "objective": objective(current.with_(phy2log_LP=snap))} for count, snap in snaps]
        extra["pareto"].append({"budget": "full re-solve", **extra["target"]})
    value, goal = _objective(problems, weights_s, options, placement, with_objective=True)
    report = problem.report("rebalance", start, status=SolveStatus.HEURISTIC, objective=goal,
                            objective_value=value, extra=extra)
    return placement.with_(report=report)


def _objective(problems: list[PlacementProblem], weights_s: np.ndarray, options: SolveOptions,
               placement: Placement, with_objective: bool = False) -> Any:
    """The project objective of ``placement``: its exact terms per problem (``judge``), weighted by ``weights_s``
    (with the ``Objective`` itself if ``with_objective``)."""
    params = {**options.params, "max_imbalance": 0}
    judged = [judge(p, SolveOptions(params=params), placement) for p in problems]
    value = float(sum(ws * t.value for ws, (_, t) in zip(weights_s, judged)))
    return (value, judged[0][0].objective) if with_objective else value
