"""``rebalance``: a new placement for new traffic that moves at most a budget of expert copies from the current one.

Re-solving from scratch moves almost every copy (weights that must travel); most of the gain usually comes from a
few hot experts. So:

1. **Target.** A full re-solve of the problem (any registered solver, ``auto`` by default), aligned to CURRENT
   (``placer.core.moves.align``): its GPUs renamed so that it shares as many copies with CURRENT as it can.
2. **Steps towards it, best first.** From CURRENT, a step either sets one slot to the target's expert (an expert
   gains a copy, another loses one, never its last) or exchanges the experts of two slots on different GPUs (one of
   them ends where the target has it). A step costs the copies it loads onto a GPU (1 or 2 moves); a step that would
   put a second copy of an expert on a GPU that holds one is never taken (a wasted slot). Steps are judged by the
   objective's expectation under the even split of an expert's tokens among its copies (the largest GPU load of the
   layer, and the co-located expert pairs of ``ep`` or the transitions kept on a GPU of ``coherent``, on GPUs and
   on nodes, weighted as the project objective weighs them), and taken greedily, the largest gain per move first,
   while the budget allows (per layer and in total). The greedy stops when no step improves.
3. **The target where it fits.** The greedy's steps can stall short of the target (no single step improves while
   the whole does). So the best, measured exactly, is kept of: the greedy's rows; the whole target when its moves
   fit both budgets; and the greedy's rows with the target's row in every layer whose target row fits the
   per-layer budget and scores better there, most gain per extra move first while the total budget allows
   (``_take_target``). The target's rows come as they are (an ``eplb`` target's may hold two copies of an expert
   on one GPU).
4. **Report.** The placement keeps CURRENT's GPU names; its exact project objective is measured on the problem
   (``assignment.judge``), with the moves and the objective after each budget on the way (the Pareto front that
   ``--pareto`` plots). No bound is claimed: the budget makes this a different problem from the full solve.

**Time.** The command's ``--time-limit`` covers the whole rebalance: the full re-solve gets ``RESOLVE_SHARE`` of
it, and the steps and the front stop at a ``deadline`` that leaves time for the exact measurements still to come
(each as long as the first one took); the report says where the clock stopped them.

A budget of 0 returns CURRENT unchanged (the target is not needed). With scenarios, steps are judged on the
scenarios' mean (each scenario normalised by its tokens) and the result is reported on every scenario.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from placer.core.mode import TrafficMode
from placer.core.moves import MoveCount, align, check_same_shape, count_moves
from placer.core.objective import TRAFFIC_QUANTITIES, Objective, Quantity
from placer.core.placement import Placement, SolveStatus
from solvers.assignment import judge
from solvers.instance import weights_of
from solvers.problem import PlacementProblem, SolveOptions
from solvers.warmup import warm_up

EPS = 1e-9
# The share of the time limit the full re-solve gets when steps follow; the steps and the front take the rest.
RESOLVE_SHARE = 0.5
# Exact measurements a run still makes after the greedy's steps (the result and one mix of target layers): the
# steps stop this many first-measurement times before the deadline.
FINAL_JUDGES = 2.5


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
        # The objective's weights, as the solvers weigh them (``Objective.weighted``).
        known = all(p.coact_LEE is not None and p.trans_LEE is not None for p in problems)
        objective = Objective.weighted(self.mode, weights_of(options.params, base), G, N, traffic=known)
        per_gpu, per_node = TRAFFIC_QUANTITIES[self.mode]
        self.cb = objective.weight(Quantity.MAX_LOAD)
        self.cg, self.cn = objective.weight(per_gpu), objective.weight(per_node)
        # The scenarios' mean, each normalised by its tokens (weights_s).
        w_LE = sum(ws * p.load_LE for ws, p in zip(weights_s, problems))
        traffic = known and self.cg + self.cn > 0
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
    def _step_changes(self, l: int, p: int, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(GPUs, experts, copy changes) of setting slot p to the target (q < 0) or exchanging p and q."""
        lay, g = self.layers[l], self.gpu_of_slot[p]
        a = lay.row[p]
        if q < 0:
            b = self.target.phy2log_LP[l, p]
            return np.array([g, g]), np.array([a, b]), np.array([-1, 1])
        h, b = self.gpu_of_slot[q], lay.row[q]
        return np.array([g, g, h, h]), np.array([a, b, b, a]), np.array([-1, 1, -1, 1])

    def _arrivals(self, l: int, p: int, q: int) -> int | None:
        """The moves of a step: the experts it loads onto a GPU, each one a GPU did not hold; None if it would put
        a second copy of an expert on a GPU that holds one (a wasted slot: the copies split that GPU's tokens)."""
        lay, g = self.layers[l], self.gpu_of_slot[p]
        if q < 0:
            arrive = [(g, self.target.phy2log_LP[l, p])]
        else:
            arrive = [(g, lay.row[q]), (self.gpu_of_slot[q], lay.row[p])]
        if any(lay.n_GE[h, e] > 0 for h, e in arrive):
            return None
        return len(arrive)

    def _gain(self, l: int, p: int, q: int, commit: bool = False) -> float:
        """The surrogate objective's decrease by a step (applied if ``commit``)."""
        lay = self.layers[l]
        gpus, experts, dn = self._step_changes(l, p, q)
        old_max = lay.load_G.max()
        d_gpu, d_node, new_max = _apply(gpus, experts, dn, lay.n_GE, lay.cnt_E, self.node_G, lay.w_E, lay.load_G,
                                        lay.F_GE, lay.FN_NE, lay.C_EE, self.cg, self.cn, commit)
        return self.cb * (old_max - new_max) + self.cg * d_gpu + self.cn * d_node

    def _candidates(self, l: int) -> list[tuple[float, int, int, int]]:
        """Layer l's improving steps as (gain, moves, p, q), best gain per move first."""
        lay, tgt = self.layers[l], self.target.phy2log_LP[l]
        out = []
        for p in np.nonzero(lay.row != tgt)[0]:
            p = int(p)
            steps = [-1] if lay.cnt_E[lay.row[p]] > 1 else []  # no expert loses its last copy
            steps += [int(q) for q in np.nonzero((lay.row == tgt[p]) & (self.gpu_of_slot != self.gpu_of_slot[p]))[0]]
            for q in steps:
                moves = self._arrivals(l, p, q)
                if moves is None:
                    continue
                gain = self._gain(l, p, q)
                if gain > EPS:
                    out.append((gain, moves, p, q))
        return out

    def run(self, budget: Budget, record: list[int] | None = None,
            stop_at: float | None = None) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """The rows after the greedy within ``budget``; with ``record`` (move counts), the rows as they stood when
        the moves first reached each count, for the Pareto front. With ``stop_at`` (a ``time.perf_counter()``
        value) no step is taken after it (``self.stopped_by_time`` then says so)."""
        self.stopped_by_time = False
        snapshots: list[tuple[int, np.ndarray]] = []
        pending = sorted(record or [])
        heap: list[tuple[float, int, int, int, int, int]] = []
        stamp = [0] * self.L
        total = 0

        def push(l: int) -> None:
            stamp[l] += 1
            for gain, moves, p, q in self._candidates(l):
                heapq.heappush(heap, (-gain / moves, -gain, l, stamp[l], p, q))

        def rows() -> np.ndarray:
            return np.stack([lay.row for lay in self.layers])

        for l in range(self.L):
            push(l)
        while heap:
            if stop_at is not None and time.perf_counter() > stop_at:
                self.stopped_by_time = True
                break
            _, _, l, st, p, q = heapq.heappop(heap)
            if st != stamp[l]:
                continue  # the layer changed since: its steps were judged again
            moves = self._arrivals(l, p, q)
            if moves is None or self._gain(l, p, q) <= EPS:
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


def rebalance(problems: list[PlacementProblem], current: Placement, target: Placement | None, budget: Budget,
              options: SolveOptions, weights_s: np.ndarray | None = None,
              pareto: list[int] | None = None, deadline: float | None = None) -> Placement:
    """The rebalanced placement of ``problems`` (one, or the scenarios, judged on their mean with ``weights_s``,
    default equal) from ``current`` towards ``target`` within ``budget``. With ``pareto`` (move counts), the
    report's ``extra["pareto"]`` holds the objective and moves (inside and across nodes) after each count of moves of
    the unbudgeted greedy (with the target's layers that fit the count, as step 3), then the target's (the full
    re-solve). With a budget of 0 and no ``pareto``, ``target`` may be None (it is not used:
    the report's ``extra["target"]`` is then None). ``deadline`` (a ``time.perf_counter()`` value): the steps and the
    front stop in time for the run to end by it (``extra["stopped_by_time"]`` lists what the clock cut short)."""
    start = time.perf_counter()
    if target is not None:
        check_same_shape(current, target)
    elif not budget.zero or pareto:
        raise ValueError("a full re-solve (target) is needed unless the budget is 0")
    problem = problems[0]
    if (problem.num_layers, problem.num_experts, problem.num_slots) != (current.num_layers, current.num_experts,
                                                                         current.num_slots):
        raise ValueError(f"the current placement has {current.num_layers} layers x {current.num_experts} experts "
                         f"in {current.num_slots} slots, the input {problem.num_layers} x {problem.num_experts} in "
                         f"{problem.num_slots}")
    weights_s = np.full(len(problems), 1.0 / len(problems)) if weights_s is None else np.asarray(weights_s)

    def judged(rows: np.ndarray) -> _Judged:
        return _judge(problems, weights_s, options, current.with_(phy2log_LP=rows, topology=problem.topology))

    t1 = time.perf_counter()
    now = judged(current.phy2log_LP)
    # The steps stop in time for the exact measurements still to come, each as long as this first one.
    reserve = FINAL_JUDGES * (time.perf_counter() - t1)
    stop_at = None if deadline is None else deadline - reserve
    aligned = full = None
    if target is not None:
        aligned = align(current, target)
        full = judged(aligned.phy2log_LP)
    extra: dict[str, Any] = {"budget": {"per_layer": budget.per_layer, "total": budget.total},
                             "current_objective": now.value, "target": None, "took_target": None,
                             "stopped_by_time": []}
    if budget.zero:
        # Step 1 (a budget of 0): CURRENT as it is; no step is taken.
        rows, result = current.phy2log_LP.copy(), now
    else:
        # Step 1: the greedy within the budget.
        greedy = Rebalancer(problems, weights_s, current, target, options)
        # With a front to measure too, the steps leave it half of the time left.
        steps_stop = stop_at if stop_at is None or not pareto else (time.perf_counter() + stop_at) / 2
        rows, _ = greedy.run(budget, stop_at=steps_stop)
        if greedy.stopped_by_time:
            extra["stopped_by_time"].append("steps")
        result = judged(rows)
        # Step 2: the target itself where it fits the budget and does better (the greedy's steps can stall short
        # of it): whole, or layer by layer (``_take_target``).
        rows, result, extra["took_target"] = _take_target(current, aligned, rows, result, full, budget, judged)
    if target is not None:
        extra["target"] = {"solver": target.report.solver, **_moves_of(count_moves(current, aligned)),
                           "objective": full.value}
    placement = current.with_(phy2log_LP=rows, topology=problem.topology)
    extra["moves"] = count_moves(current, placement).to_dict()
    # Step 3: the front: the same greedy without a budget, cut at each count of moves (with the target's layers
    # where they fit that count, as step 2; a larger count keeps a smaller one's placement if it is better), then
    # the full re-solve.
    if pareto:
        front = Rebalancer(problems, weights_s, current, target, options)
        _, snaps = front.run(Budget(), record=pareto, stop_at=stop_at)
        extra["pareto"], best = [], None
        for count, snap in snaps:
            if stop_at is not None and time.perf_counter() > stop_at:  # the rest of the front is not measured
                extra["stopped_by_time"].append(f"front from {count} moves")
                break
            point = _take_target(current, aligned, snap, judged(snap), full, Budget(total=count), judged)[:2]
            best = point if best is None or point[1].value < best[1].value - EPS else best
            extra["pareto"].append({"budget": count, **_moves_of(count_moves(current, current.with_(phy2log_LP=best[0]))),
                                    "objective": best[1].value})
        if front.stopped_by_time:
            extra["stopped_by_time"].append("front's steps")
        extra["pareto"].append({"budget": "full re-solve", **extra["target"]})
    report = problem.report("rebalance", start, status=SolveStatus.HEURISTIC, objective=result.objective,
                            objective_value=result.value, extra=extra)
    return placement.with_(report=report)


def compile_kernels(mode: TrafficMode) -> None:
    """Compile (or load from numba's cache) the steps' kernel before a timed rebalance, once per process and mode
    (``solvers/warmup.py``): the steps on the warm-up's tiny problem, from one layout towards another."""
    warm_up("rebalance", mode, False, lambda problems, _options: _warm_steps(problems[0]))


def _warm_steps(problem: PlacementProblem) -> None:
    slot = np.tile(np.arange(problem.num_slots), (problem.num_layers, 1))
    gpu = slot // problem.slots_per_gpu
    current = problem.placement(gpu, slot % problem.num_experts, problem.report("warm-up", time.perf_counter()))
    target = problem.placement(gpu, slot[:, ::-1] % problem.num_experts, current.report)
    Rebalancer([problem], np.ones(1), current, target, SolveOptions()).run(Budget())


def _moves_of(m: MoveCount) -> dict[str, int]:
    """A point's moves: in all, and those served inside a node / across nodes (``MoveCount.to_dict``'s keys)."""
    d = m.to_dict()
    return {k: d[k] for k in ("moves", "intra_node_moves", "inter_node_moves")}


def _take_target(current: Placement, aligned: Placement, rows: np.ndarray, result: "_Judged", full: "_Judged",
                 budget: Budget, judged) -> tuple[np.ndarray, "_Judged", Any]:
    """The best, measured exactly, of: the greedy's ``rows`` (objective ``result``; returned with None); the whole
    aligned target (objective ``full``; ``"all"``) when its moves fit both budgets; and the greedy's rows with the
    target's row in the layers (their list) whose target row fits the per-layer budget and scores better there
    (per layer: the busiest GPU and the layer's traffic, exact in ep; in coherent a pair of layers' transitions
    counts half to each), most gain per extra move first while the total budget allows."""
    greedy_L = count_moves(current, current.with_(phy2log_LP=rows)).moves_L
    target_L = count_moves(current, aligned).moves_L
    fits_L = np.ones(len(target_L), dtype=bool) if budget.per_layer is None else target_L <= budget.per_layer
    best_rows, best, took = rows, result, None
    if fits_L.all() and (budget.total is None or target_L.sum() <= budget.total) and full.value < best.value - EPS:
        best_rows, best, took = aligned.phy2log_LP.copy(), full, "all"
    # Layer by layer: the target's rows where they gain, within the total budget.
    gain_L = result.value_L - full.value_L
    extra_L = target_L - greedy_L
    order = sorted((l for l in range(len(gain_L)) if fits_L[l] and gain_L[l] > EPS),
                   key=lambda l: (-gain_L[l] / max(extra_L[l], 0.5), l))
    total, chosen = int(greedy_L.sum()), []
    for l in order:
        if budget.total is None or total + extra_L[l] <= budget.total:
            chosen.append(l)
            total += int(extra_L[l])
    if chosen and len(chosen) < len(gain_L):
        mixed = rows.copy()
        mixed[chosen] = aligned.phy2log_LP[chosen]
        mix = judged(mixed)
        if mix.value < best.value - EPS:
            best_rows, best, took = mixed, mix, sorted(chosen)
    return best_rows, best, took


@dataclass
class _Judged:
    """A placement's exact project objective over the problems (weighted by the scenarios' weights): ``value``,
    its share by layer ``value_L`` (the busiest GPU and the layer's traffic; in coherent half of each pair of
    layers' transitions to either layer), summing to ``value``; and the ``Objective``."""

    value: float
    value_L: np.ndarray
    objective: Objective


def _judge(problems: list[PlacementProblem], weights_s: np.ndarray, options: SolveOptions,
           placement: Placement) -> _Judged:
    """The project objective of ``placement``: its exact terms per problem (``judge``), weighted by ``weights_s``."""
    params = {**options.params, "max_imbalance": 0}
    value, value_L, objective = 0.0, np.zeros(placement.num_layers), None
    for ws, p in zip(weights_s, problems):
        inst, t = judge(p, SolveOptions(params=params), placement)
        objective = objective or inst.objective
        traffic = inst.value(np.asarray(t.gpus_L), np.asarray(t.nodes_L), 0.0)
        if inst.traffic and inst.mode.model.first_layer:  # [L - 1] transitions between layers: half to each
            traffic = np.concatenate([traffic, [0.0]]) / 2 + np.concatenate([[0.0], traffic]) / 2
        value += ws * t.value
        value_L += ws * (inst.c_bal * np.asarray(t.maxload_L) + traffic)
    return _Judged(float(value), value_L, objective)
