"""Robust placement: one placement for several scenarios (workloads), judged on the worst one or on their mean.

Each scenario's objective (the project objective, ``placer/core/objective.py``) is divided by the scenario's tokens,
so a large scenario does not drown a small one; ``worst`` minimises the largest of these, ``mean`` their average.

``auto`` with scenarios (``solve_robust``):

1. **Copies that hedge.** Redundant copies go, one at a time, to the expert whose *peak* share per copy over the
   scenarios is the largest (EPLB's rule on each expert's worst scenario): an expert hot in any scenario earns
   copies, not only the one hot on average. Every scenario is then an instance of the same items.
2. **Start.** The best, by the robust objective, of an LPT packing of the items by their peak load, of the
   warm-start baselines solved on the scenarios' sum (where their copies match), and of ``auto``'s own local
   search (``localsearch.improve``, exact swap costs) on the scenarios' mean: every scenario's counts divided by
   its tokens and added, with the hedged copies (half of the work budget).
3. **Robust swap search.** Swaps of two items of one layer on different GPUs, each judged on every scenario at
   once: the largest GPU load exactly, the traffic by the pairwise surrogate in ``ep`` (tokens of a pair of items
   that share a GPU or node; exact for top-2) and exactly (pair hops) in ``coherent``; a swap is taken when the
   worst (or mean) scenario improves. After every round the scenarios' objectives are measured again exactly.
4. **CP-SAT on the robust objective** (``cpsat.RobustCpsatModel``, where the joint model of all scenarios fits
   ROBUST_MAX_VARIABLES and the time left): the placement variables once, every scenario's loads and traffic
   on them, the worst (or the sum) of their weighted objectives minimised, warm-started from the search. Its
   placement is kept if it is better on the exact robust objective; its bound (scaled back from the model's
   integer coefficients so that it stays valid) tightens the bound of the hedged copies.
5. **Report.** The better, by the exact robust objective, of the search's placement and of the warm-start
   baselines on the sum (with their own copies: so never worse than them), the exact objective of every
   scenario (``scenario_figures``), and a valid lower bound: for each set of copies considered, the worst (or
   mean) of the scenarios' own lower bounds (``bounds.lower_bound``, each no larger than its scenario's
   objective for any placement of those copies), or CP-SAT's where larger; the smallest of these.

Solvers without a robust method (``SolverSpec.robust``) are given the scenarios' sum (``Scenarios.summed``) and
their placement is reported on every scenario the same way.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from numba import njit

from placer.core.objective import Aggregate
from placer.core.placement import Placement, SolveReport, SolveStatus
from placer.core.trace.reader import concat_batches
from placer.core.trace.schema import RoutingBatch
from solvers import registry
from solvers.assignment import Outcome, gpu_from_placement, judge, terms
from solvers.bounds import gap_of, lower_bound
from solvers.common import WallGuard
from solvers.instance import Instance, build_instance, lpt_start
from solvers.layout import copies_cap, replicate_hottest
from solvers.localsearch import _top3, improve, swap_max
from solvers.problem import PlacementProblem, SolveOptions

EPS = 1e-12
# Swap-search work units (pair evaluations x scenarios) per second of --time-limit, as auto's.
WORK_PER_SECOND = 2e7
# The searches stop at this share of --time-limit on the wall clock whatever work is left, so that the exact
# figures and the bound of every scenario are computed within the limit on a slow or loaded machine too (the
# placement is then the same as on an unloaded machine only if the work ran out first; the report says which).
SEARCH_WALL_SHARE = 0.8


@dataclass(frozen=True, eq=False)
class Scenarios:
    """Several scenarios of one placement problem: same layers, experts, topology, redundancy and mode.

    tokens: each scenario's tokens (its figures are divided by them). aggregate: worst or mean.
    """

    problems: tuple[PlacementProblem, ...]
    names: tuple[str, ...]
    tokens: tuple[float, ...]
    aggregate: Aggregate = Aggregate.WORST

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregate", Aggregate(self.aggregate))
        if not self.problems or len(self.names) != len(self.problems) or len(self.tokens) != len(self.problems):
            raise ValueError("scenarios need a problem, a name and a token count each")
        first = self.problems[0]
        for name, p, t in zip(self.names, self.problems, self.tokens):
            if not t > 0:
                raise ValueError(f"scenario {name!r} has no tokens")
            mine = (p.num_layers, p.num_experts, p.num_redundant, p.topology.num_gpus, p.topology.num_nodes, p.mode)
            theirs = (first.num_layers, first.num_experts, first.num_redundant, first.topology.num_gpus,
                      first.topology.num_nodes, first.mode)
            if mine != theirs:
                raise ValueError(f"scenario {name!r} is (layers, experts, redundant, GPUs, nodes, mode) {mine}, "
                                 f"scenario {self.names[0]!r} {theirs}")

    @property
    def first(self) -> PlacementProblem:
        return self.problems[0]

    @property
    def weights_s(self) -> np.ndarray:
        """[S] 1 / tokens of each scenario."""
        return 1.0 / np.asarray(self.tokens, dtype=np.float64)

    def summed(self) -> PlacementProblem:
        """One problem of all the scenarios' tokens together (counts added, token paths concatenated)."""
        if len(self.problems) == 1:
            return self.first
        return self._combined(np.ones(len(self.problems)), ", ".join(self.names), with_paths=True)

    def mean_problem(self) -> PlacementProblem:
        """The scenarios' mean: every scenario's counts divided by its tokens, added (statistics only: the
        counts are no longer whole tokens)."""
        return self._combined(self.weights_s, f"mean of {', '.join(self.names)}", with_paths=False)

    def _combined(self, weights_S: np.ndarray, source: str, with_paths: bool) -> PlacementProblem:
        """The problem of the scenarios' counts weighted by ``weights_S`` and added (with their token paths, if all
        have them and ``with_paths``)."""
        ps, first = self.problems, self.first

        def total(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in ps]
            if any(a is None for a in arrays):
                return None
            return sum(w * np.asarray(a, dtype=np.float64) for w, a in zip(weights_S, arrays))

        paths = None
        if with_paths and all(p.paths_TLK is not None for p in ps):
            paths = concat_batches([RoutingBatch(experts_TLK=p.paths_TLK, present_TL=p.present_TL, seq_T=p.seq_T)
                                    for p in ps])
        return PlacementProblem(
            load_LE=total("load_LE"), topology=first.topology, num_redundant=first.num_redundant, mode=first.mode,
            top_k=first.top_k, coact_LEE=total("coact_LEE"), trans_LEE=total("trans_LEE"),
            paths_TLK=None if paths is None else paths.experts_TLK, present_TL=None if paths is None else paths.present_TL,
            seq_T=None if paths is None else paths.seq_T, source=source, model_layer_indices=first.model_layer_indices)

    def without(self, k: int) -> "Scenarios":
        """All scenarios but the k-th (leave-one-out)."""
        keep = [i for i in range(len(self.problems)) if i != k]
        return Scenarios(tuple(self.problems[i] for i in keep), tuple(self.names[i] for i in keep),
                         tuple(self.tokens[i] for i in keep), self.aggregate)


def hedged_copies(scn: Scenarios) -> np.ndarray:
    """[L, E] copies: EPLB's rule on every expert's peak load per token over the scenarios (at most one per GPU)."""
    peak = np.max(np.stack([p.load_LE * w for p, w in zip(scn.problems, scn.weights_s)]), axis=0)
    p = scn.first
    cap = copies_cap(p.num_experts, p.num_slots, p.topology.num_gpus)
    return np.stack([replicate_hottest(peak[l], p.num_slots, cap)[1] for l in range(p.num_layers)])


def _no_cap(options: SolveOptions) -> SolveOptions:
    return SolveOptions(options.time_limit_s, options.seed, options.threads, {**options.params, "max_imbalance": 0})


def scenario_figures(scn: Scenarios, options: SolveOptions, placement: Placement,
                     insts: list[Instance] | None = None) -> dict[str, Any]:
    """Every scenario's figures for ``placement`` (exact, from its own copies): the objective per token (summed
    over layers, as optimised), the max/mean GPU load (mean over layers, and the worst layer) and, where the
    scenario has traffic, the traffic terms per token and layer as ``evaluate`` reports them (ep:
    ``*_per_token_layer``; coherent: ``*_per_token_transition``, per pair of adjacent layers); then the worst and
    the mean of each figure over the scenarios. ``insts``: the scenarios' instances of the placement's copies, if
    already built."""
    rows = []
    for s, (name, p, tokens) in enumerate(zip(scn.names, scn.problems, scn.tokens)):
        if insts is None:
            inst, t = judge(p, _no_cap(options), placement)
        else:
            inst = insts[s]
            t = terms(inst, gpu_from_placement(inst, placement))
        mean_L = inst.load_LP.sum(axis=1) / inst.G
        ratio = np.divide(t.maxload_L, mean_L, out=np.ones_like(mean_L), where=mean_L > 0)
        row = {"name": name, "tokens": tokens, "objective_per_token": t.value / tokens,
               "max_over_mean": float(ratio.mean()), "worst_layer_max_over_mean": float(ratio.max())}
        if inst.traffic:
            unit, per = _traffic_unit(p, tokens)
            row.update({f"{key}_per_token_{unit}": v / per if per > 0 else 0.0
                        for key, v in t.to_dict(inst).items() if key != "max_load_sum"})
        rows.append(row)
    return {"aggregate": str(scn.aggregate), **worst_and_mean(rows),
            "objective": scn.aggregate.combine(r["objective_per_token"] for r in rows)}


def _traffic_unit(p: PlacementProblem, tokens: float) -> tuple[str, float]:
    """What the traffic terms of a scenario are divided by: its token-layers (ep, ``"layer"``) or its tokens'
    transitions between adjacent layers (coherent, ``"transition"``), the present ones if the paths say."""
    L, f = p.num_layers, p.mode.model.first_layer  # traffic counted per layer from layer f (1: transitions)
    unit = "transition" if f else "layer"
    if p.present_TL is None:
        return unit, tokens * (L - f)
    present = np.asarray(p.present_TL, dtype=bool)
    return unit, float((present[:, f:] & present[:, :L - f]).sum())


def worst_and_mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"scenarios": rows, "worst": ..., "mean": ...}``: each figure's worst (largest) and mean over the rows (the
    figures every row has: traffic only where every scenario has it)."""
    keys = [k for k in rows[0] if k not in ("name", "tokens") and all(k in r for r in rows)]
    return {"scenarios": rows, "worst": {k: max(r[k] for r in rows) for k in keys},
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


# -- the robust swap search -------------------------------------------------------------------------------------

@njit(cache=True)
def _combine(tot, mean):
    if mean:
        return tot.mean()
    return tot.max()


@njit(cache=True)
def _robust_layer(gpu, w_SP, W_SPP, cap_S, node, N, prev, nxt, step, cb, cg, cn, tot, mean, order, budget):
    """Swap search on one layer (``ep``: the objective decomposes by layer for every scenario) against the robust
    combination of the scenarios' totals ``tot`` (updated in place with each taken swap's change); returns the
    work done."""
    # (a deliberate duplicate of _robust_coherent's and localsearch's loops: see localsearch.ep_layer_search)
    S, P = w_SP.shape
    G = node.shape[0]
    gpu1, prev1, nxt1 = gpu.reshape(1, P), prev.reshape(1, P), nxt.reshape(1, P)  # the layer as [1, P] rows
    load = np.zeros((S, G))
    A = np.zeros((S, P, G))
    AN = np.zeros((S, P, N))
    for s in range(S):
        for i in range(P):
            load[s, gpu[i]] += w_SP[s, i]
            for k in range(P):
                if W_SPP[s, i, k] != 0.0:
                    A[s, i, gpu[k]] += W_SPP[s, i, k]
                    AN[s, i, node[gpu[k]]] += W_SPP[s, i, k]
    top = np.empty((S, 3), np.int64)
    for s in range(S):
        a, b, c = _top3(load[s])
        top[s, 0], top[s, 1], top[s, 2] = a, b, c
    d = np.empty(S)
    trial = np.empty(S)
    best_d = np.empty(S)
    work = S * P * P
    improved = True
    while improved and work < budget:
        improved = False
        for oi in range(P):
            i = order[oi]
            g1 = gpu[i]
            n1 = node[g1]
            cur = _combine(tot, mean)
            best = -EPS
            bj = -1
            for j in range(P):
                g2 = gpu[j]
                n2 = node[g2]
                ok = True
                for s in range(S):
                    m = swap_max(0, s, i, j, gpu1, prev1, nxt1, step, load, w_SP, cap_S[s], top[s, 0], top[s, 1],
                                 top[s, 2])
                    if m < 0.0:
                        ok = False
                        break
                    v = cb * (m - load[s, top[s, 0]])
                    v -= cg * (A[s, i, g2] - A[s, i, g1] + A[s, j, g1] - A[s, j, g2] - 2.0 * W_SPP[s, i, j])
                    if n1 != n2:
                        v -= cn * (AN[s, i, n2] - AN[s, i, n1] + AN[s, j, n1] - AN[s, j, n2] - 2.0 * W_SPP[s, i, j])
                    d[s] = v
                    trial[s] = tot[s] + v
                if not ok:
                    continue
                delta = _combine(trial, mean) - cur
                if delta < best:
                    best = delta
                    bj = j
                    best_d[:] = d
            work += P * S
            if bj < 0:
                continue
            j = bj
            g2 = gpu[j]
            n2 = node[g2]
            for s in range(S):
                for k in range(P):
                    dw = W_SPP[s, k, i] - W_SPP[s, k, j]
                    if dw != 0.0:
                        A[s, k, g1] -= dw
                        A[s, k, g2] += dw
                        if n1 != n2:
                            AN[s, k, n1] -= dw
                            AN[s, k, n2] += dw
                load[s, g1] += w_SP[s, j] - w_SP[s, i]
                load[s, g2] += w_SP[s, i] - w_SP[s, j]
                a, b, c = _top3(load[s])
                top[s, 0], top[s, 1], top[s, 2] = a, b, c
                tot[s] += best_d[s]
            gpu[i] = g2
            gpu[j] = g1
            work += S * P
            improved = True
            if work >= budget:
                break
    return work


# The ep and coherent searches below share their shape (best partner per item, the robust combination of every
# scenario's change, the running sums updated after a swap) but not their sums: deliberately two kernels, as
# localsearch.py has, because numba compiles a plain loop over arrays far faster than one behind a callback.
@njit(cache=True)
def _robust_coherent(gpu, w_SLP, T_SLPP, cap_SL, node, N, prev, nxt, step, cb, cg, cn, tot, mean, order, budget):
    """Swap search on all layers (``coherent``: transitions couple each layer to the next) against the robust
    combination of the scenarios' totals ``tot`` (updated in place); returns the work done."""
    S, L, P = w_SLP.shape
    G = node.shape[0]
    H = np.zeros((S, L, P, G))
    HN = np.zeros((S, L, P, N))
    load = np.zeros((S, L, G))
    for s in range(S):
        for l in range(L):
            for i in range(P):
                load[s, l, gpu[l, i]] += w_SLP[s, l, i]
        for l in range(L - 1):
            for i in range(P):
                for j in range(P):
                    t = T_SLPP[s, l, i, j]
                    if t != 0.0:
                        H[s, l, i, gpu[l + 1, j]] += t
                        H[s, l + 1, j, gpu[l, i]] += t
                        HN[s, l, i, node[gpu[l + 1, j]]] += t
                        HN[s, l + 1, j, node[gpu[l, i]]] += t
    top = np.empty((S, 3), np.int64)
    d = np.empty(S)
    trial = np.empty(S)
    best_d = np.empty(S)
    work = S * L * P * P
    improved = True
    while improved and work < budget:
        improved = False
        for l in range(L):
            for s in range(S):
                a, b, c = _top3(load[s, l])
                top[s, 0], top[s, 1], top[s, 2] = a, b, c
            for oi in range(P):
                i = order[l, oi]
                g1 = gpu[l, i]
                n1 = node[g1]
                cur = _combine(tot, mean)
                best = -EPS
                bj = -1
                for j in range(P):
                    g2 = gpu[l, j]
                    n2 = node[g2]
                    ok = True
                    for s in range(S):
                        m = swap_max(l, l, i, j, gpu, prev, nxt, step, load[s], w_SLP[s], cap_SL[s, l], top[s, 0],
                                     top[s, 1], top[s, 2])
                        if m < 0.0:
                            ok = False
                            break
                        v = cb * (m - load[s, l, top[s, 0]])
                        v += cg * (H[s, l, i, g1] - H[s, l, i, g2] + H[s, l, j, g2] - H[s, l, j, g1])
                        if n1 != n2:
                            v += cn * (HN[s, l, i, n1] - HN[s, l, i, n2] + HN[s, l, j, n2] - HN[s, l, j, n1])
                        d[s] = v
                        trial[s] = tot[s] + v
                    if not ok:
                        continue
                    delta = _combine(trial, mean) - cur
                    if delta < best:
                        best = delta
                        bj = j
                        best_d[:] = d
                work += P * S
                if bj < 0:
                    continue
                j = bj
                g2 = gpu[l, j]
                n2 = node[g2]
                for s in range(S):
                    if l + 1 < L:
                        for k in range(P):
                            di = T_SLPP[s, l, i, k]
                            dj = T_SLPP[s, l, j, k]
                            if di != 0.0 or dj != 0.0:
                                H[s, l + 1, k, g1] += dj - di
                                H[s, l + 1, k, g2] += di - dj
                                HN[s, l + 1, k, n1] += dj - di
                                HN[s, l + 1, k, n2] += di - dj
                    if l > 0:
                        for k in range(P):
                            di = T_SLPP[s, l - 1, k, i]
                            dj = T_SLPP[s, l - 1, k, j]
                            if di != 0.0 or dj != 0.0:
                                H[s, l - 1, k, g1] += dj - di
                                H[s, l - 1, k, g2] += di - dj
                                HN[s, l - 1, k, n1] += dj - di
                                HN[s, l - 1, k, n2] += di - dj
                    load[s, l, g1] += w_SLP[s, l, j] - w_SLP[s, l, i]
                    load[s, l, g2] += w_SLP[s, l, i] - w_SLP[s, l, j]
                    a, b, c = _top3(load[s, l])
                    top[s, 0], top[s, 1], top[s, 2] = a, b, c
                    tot[s] += best_d[s]
                gpu[l, i] = g2
                gpu[l, j] = g1
                work += 2 * S * P
                improved = True
                if work >= budget:
                    return work
    return work


class RobustSearch:
    """The scenarios as instances of the same items, and the robust objective of an assignment of them."""

    def __init__(self, scn: Scenarios, options: SolveOptions, copies_LE: np.ndarray | None = None) -> None:
        self.scn = scn
        self.copies = hedged_copies(scn) if copies_LE is None else copies_LE
        self.insts: list[Instance] = [build_instance(p, options, copies_LE=self.copies) for p in scn.problems]
        self.w_s = scn.weights_s
        self.mean = scn.aggregate is Aggregate.MEAN
        first = self.insts[0]
        self.traffic = all(inst.traffic for inst in self.insts)
        self.cb, self.cg, self.cn = first.c_bal, first.c_gpu if self.traffic else 0.0, first.c_node if self.traffic else 0.0

    def totals(self, gpu_LP: np.ndarray) -> np.ndarray:
        """[S] every scenario's exact objective per token."""
        return np.array([terms(inst, gpu_LP).value * w for inst, w in zip(self.insts, self.w_s)])

    def value(self, gpu_LP: np.ndarray) -> float:
        return self.scn.aggregate.combine(self.totals(gpu_LP))

    def starts(self, baselines: list[Placement]) -> list[tuple[str, np.ndarray]]:
        """LPT by the items' peak load, then every baseline whose copies are these."""
        inst = self.insts[0]
        peak = np.max(np.stack([i.load_LP * w for i, w in zip(self.insts, self.w_s)]), axis=0)
        out = [("lpt-peak", lpt_start(peak, inst.item_expert_LP, inst.G))]
        for p in baselines:
            gpu = gpu_from_placement(inst, p)
            if gpu is not None and inst.order_ok(gpu):
                out.append((p.report.solver, gpu))
        return out

    def caps(self, gpu_LP: np.ndarray) -> np.ndarray:
        """[S, L] each scenario's cap on a layer's largest GPU load (its instance's, ``max_imbalance`` x its mean),
        raised to the load ``gpu_LP`` already has there, per token: a swap never pushes a scenario over it."""
        return np.stack([i.cap_L * w * (1 + 1e-12) for i, w in zip(self.capped_at(gpu_LP), self.w_s)])

    def capped_at(self, gpu_LP: np.ndarray) -> list[Instance]:
        """The scenarios' instances with their caps raised to the loads ``gpu_LP`` has (each cap is feasible
        alone; together they may not be)."""
        out = []
        for inst in self.insts:
            have = np.array([np.bincount(gpu_LP[l], weights=inst.load_LP[l], minlength=inst.G).max()
                             for l in range(inst.L)])
            raised = copy.copy(inst)
            raised.cap_L = np.maximum(inst.cap_L, have)
            out.append(raised)
        return out

    def improve(self, gpu_LP: np.ndarray, budget: float, seed: int, wall: WallGuard) -> tuple[np.ndarray, float, int]:
        """Rounds of the robust swap search until a round finds nothing, the work budget or the wall clock
        ends it; returns (assignment, exact robust value, rounds)."""
        inst = self.insts[0]
        gpu = gpu_LP.astype(np.int64).copy()
        cap_SL = self.caps(gpu)
        prev, nxt = inst.prev_next_LP()
        node = inst.node_of_gpu.astype(np.int64)
        rng = np.random.default_rng(seed)
        best, best_v = gpu.copy(), self.value(gpu)
        work, rounds = 0.0, 0
        while work < budget and not wall.over():
            rounds += 1
            tot = self.totals(gpu)
            before, before_v = gpu.copy(), best_v
            if inst.mode.decomposes_by_layer or not self.traffic:  # layer by layer; else all layers at once
                for l in rng.permutation(inst.L):
                    W = np.stack([i.pair_weights(l) * w if self.traffic else np.zeros((inst.P, inst.P))
                                  for i, w in zip(self.insts, self.w_s)])
                    w_SP = np.stack([i.load_LP[l] * w for i, w in zip(self.insts, self.w_s)])
                    share = max((budget - work) / inst.L, 1.0)
                    row = gpu[l].copy()
                    work += _robust_layer(row, w_SP, W, cap_SL[:, l].copy(), node, inst.N, prev[l], nxt[l], inst.copy_step,
                                          self.cb, self.cg, self.cn,
                                          tot, self.mean, rng.permutation(inst.P).astype(np.int64), share)
                    gpu[l] = row
                    if wall.over():
                        break
            else:
                w_SLP = np.stack([i.load_LP * w for i, w in zip(self.insts, self.w_s)])
                T = np.stack([i.trans_LPP * w for i, w in zip(self.insts, self.w_s)])
                order = np.stack([rng.permutation(inst.P) for _ in range(inst.L)]).astype(np.int64)
                work += _robust_coherent(gpu, w_SLP, T, cap_SL, node, inst.N, prev, nxt, inst.copy_step, self.cb, self.cg,
                                         self.cn, tot,
                                         self.mean, order, max(budget - work, 1.0))
            # The surrogate's choices are judged exactly: a round that does not improve the robust value ends it.
            v = self.value(gpu)
            if v < best_v - 1e-12:
                best, best_v = gpu.copy(), v
            if np.array_equal(gpu, before) or best_v >= before_v - 1e-12:
                break
            gpu = best.copy()
        return best, best_v, rounds

    def bound(self) -> float:
        """The robust combination of the scenarios' lower bounds per token (valid for these items)."""
        return self.scn.aggregate.combine(lower_bound(inst)[0] * w for inst, w in zip(self.insts, self.w_s))


# CP-SAT's nominal share of the time limit on the joint robust model (step 3), after the searches; the wall clock
# cuts it at the searches' deadline.
CPSAT_SHARE = 0.5
RobustCpsat = Callable[[list[Instance], np.ndarray, bool, np.ndarray, SolveOptions, float, WallGuard], Outcome]


def solve_robust(scn: Scenarios, options: SolveOptions, solver: str = "auto", cpsat: RobustCpsat | None = None
                 ) -> Placement:
    """The robust solve of ``auto`` and ``cpsat`` (module docstring); ``cpsat``: the joint CP-SAT model's
    solve (``solvers.cpsat.run_cpsat_robust``, handed in by the registering solver)."""
    start = time.perf_counter()
    wall = WallGuard(options.time_limit_s * SEARCH_WALL_SHARE)
    search = RobustSearch(scn, options)
    inst = search.insts[0]
    summed = scn.summed()
    baselines = []
    for spec in registry.warm_starts():  # asked at call time: the solvers register as the package loads
        try:
            p = spec(summed, SolveOptions(time_limit_s=1.0))
        except ValueError:
            continue
        if not p.same_gpu_copies_LG.any():  # a second copy of an expert on a GPU is a wasted slot (eplb's)
            baselines.append(p)
    # Step 0: the baselines judged by the robust objective with their own copies (each set of copies built once).
    others: list[tuple[RobustSearch, list[Placement]]] = []
    for p in baselines:
        if np.array_equal(p.logcnt_LE, search.copies):
            continue
        group = next((g for g in others if np.array_equal(g[0].copies, p.logcnt_LE)), None)
        if group is None:
            others.append((RobustSearch(scn, options, copies_LE=p.logcnt_LE), [p]))
        else:
            group[1].append(p)

    # Step 1: the best start by the robust objective, auto's local search on the scenarios' mean among them.
    budget = WORK_PER_SECOND * options.time_limit_s
    cands = [(name, gpu, search.value(gpu)) for name, gpu in search.starts(baselines)]
    mean_inst = build_instance(scn.mean_problem(), options, copies_LE=search.copies)
    mean_gpu, _ = improve(mean_inst, mean_inst.start_gpu_LP, budget / 2, options.seed)
    cands.append(("local search on the mean", mean_gpu, search.value(mean_gpu)))
    name, gpu, start_v = min(cands, key=lambda c: c[2])
    # Step 2: the robust swap search on its work budget (deterministic; the wall clock is only a safety stop).
    gpu, value, rounds = search.improve(gpu, budget / 2, options.seed, wall)
    # Step 3: CP-SAT on the joint model of every scenario, warm-started from the search, where it fits the time
    # left: a better placement is kept (judged exactly), and its bound holds for these copies.
    cp_bound, cp_extra = None, {"status": "not run"}
    if cpsat is not None and not wall.over():
        insts = search.capped_at(gpu)  # the caps the search kept to (raised to its start's loads)
        out = cpsat(insts, search.w_s, search.mean, gpu, options, CPSAT_SHARE * options.time_limit_s, wall)
        cp_extra, cp_bound = out.extra["robust_cpsat"], out.bound
        cp_extra["bound"] = cp_bound
        v = search.value(out.gpu_LP)
        if v < value - 1e-12 and inst.order_ok(out.gpu_LP):
            gpu, value = out.gpu_LP, v
            cp_extra["improved"] = True
    # Step 4: the better of the search's placement and the baselines on the sum (their own copies), and a bound
    # valid for every set of copies considered.
    placement = inst.problem.placement(gpu, inst.item_expert_LP, SolveReport())
    chosen = "robust search (hedged copies)" + (", improved by CP-SAT" if cp_extra.get("improved") else "")
    # (CP-SAT's bound holds for the placements within the caps the search kept to, as both placements are)
    bounds, judged = [max(search.bound(), cp_bound or 0.0)], search
    for other, group in others:
        bounds.append(other.bound())
        for p in group:
            v = other.value(gpu_from_placement(other.insts[0], p))
            if v < value - 1e-12:
                placement, value, chosen, judged = p, v, f"{p.report.solver} on the scenarios' sum", other
    exact = all(i.exact for i in judged.insts)
    bound = min(min(bounds), value)
    gap = gap_of(value, bound)
    proven = exact and gap <= 1e-9
    objective = inst.objective.with_robust(scn.aggregate)
    extra: dict[str, Any] = {
        "start": {"solver": name, "objective": start_v}, "rounds": rounds, "stopped_by_wall_clock": wall.fired,
        "copies": "hedged: EPLB's rule on each expert's peak load per token over the scenarios",
        "chosen": chosen, "weights": {**inst.weights.to_dict(), "max_imbalance": inst.max_imbalance},
        "robust_cpsat": cp_extra,
        "objective_is_estimate": not exact,
    }
    extra["scenarios"] = scenario_figures(scn, options, placement, insts=judged.insts)
    report = scn.first.report(solver, start, status=SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE,
                              objective=objective, objective_value=float(value),
                              bound=float(value if proven else bound) if exact else None,
                              gap=(0.0 if proven else float(gap)) if exact else None, extra=extra)
    return placement.with_(report=report, topology=scn.first.topology,
                           model_layer_indices=scn.first.model_layer_indices)
