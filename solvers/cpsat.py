"""``cpsat``: one joint CP-SAT model of load balance, traffic and redundant copies (OR-Tools).

The model minimises the project's objective (``placer/core/objective.py``, ``docs/solvers.md``) over the items
of ``solvers/instance.py`` (copies of the hottest experts are made by EPLB's rule first; the model places
them):

- balance: the largest GPU load of every layer (a variable per layer, at most the cap);
- ``ep``: for every token type (a distinct set of items chosen by tokens) and GPU, an indicator that the
  type reaches that GPU (and node): the distinct GPUs and nodes of a token-layer, exact for any top-k;
- ``coherent``: for every pair of items of adjacent layers with transitions and every GPU (and node), an
  indicator that both sit there: the pair hops are the transitions not covered;
- intra- vs inter-node costs from the ``Weights`` (defaults from the topology's bandwidths);
- an expert's copies on GPUs in copy order, never two on one GPU (a second copy would only split that GPU's
  tokens).

``CpsatModel`` reads like an OR-Tools sample: Data, Variables, Constraints (a sentence above each group; the
traffic indicators of ep and coherent in ``_ep_layer`` / ``_coherent_pair``), Objective, Solve.

It is warm-started from the best feasible baseline, runs ``threads`` workers with a deterministic time
budget derived from ``--time-limit``, and reports CP-SAT's bound and gap (status OPTIMAL only when CP-SAT
proves it). In ``ep`` mode the model is a sum of independent per-layer blocks, which are solved one after
another with the time split among them; the sum of the blocks' optima is the optimum and the sum of their
bounds a bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

from placer.core.errors import MoeplaceError
from placer.core.mode import TrafficMode
from placer.core.placement import Placement
from solvers.assignment import Outcome, finish, layer_loads, terms
from solvers.common import (DET_PER_SECOND, SEARCH_END, WALL_SAFETY, WallGuard, best_start, finish_seconds,
                            wall_clock_on, workers)
from solvers.instance import Instance, build_instance
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver
from solvers.robust import solve_robust

MAX_LITERALS = 2_000_000  # a larger model is refused with a message (use ``auto``)
# The model is built in Python at about this many boolean variables per second (measured on the reference
# machine at load 3: 10,000-20,000 for ep top-2 and top-4 layers and a coherent model).
BUILD_VARS_PER_SECOND = 1e4


class BuildCut(Exception):
    """The wall clock ran out while a model was being built (``CpsatModel(wall=...)``)."""


def build_seconds(inst: Instance, layers: list[int]) -> float:
    """Seconds the model of ``layers`` is expected to take to build."""
    return model_size(inst, layers) / BUILD_VARS_PER_SECOND


def model_size(inst: Instance, layers: list[int]) -> int:
    """Boolean variables the model of ``layers`` would have."""
    n = len(layers) * inst.P * inst.G
    if not inst.traffic:
        return n
    per_item = inst.G + (inst.N if inst.N > 1 else 0)
    if inst.mode is TrafficMode.EP:
        for l in layers:
            t = inst.types_L[l]
            X, K = t.items_XK.shape
            if K > 1 and X:
                pairs = np.unique(t.items_XK[:, np.triu_indices(K, 1)[0]] * inst.P
                                  + t.items_XK[:, np.triu_indices(K, 1)[1]]).size
                n += pairs * per_item + (X * per_item if K > 2 else 0)
    else:
        for l in layers[:-1]:
            n += int((inst.trans_LPP[l] > 0).sum()) * per_item
    return n


def load_scale(load_LP: np.ndarray) -> int:
    """1 for whole loads, else the power of ten that resolves a millionth of the largest layer's load."""
    top = float(load_LP.sum(axis=1).max())
    if (load_LP == np.round(load_LP)).all() or top <= 0:
        return 1
    return 10 ** max(0, math.ceil(math.log10(1e6 / top)))


def canonical(inst: Instance, gpu_LP: np.ndarray, per_layer: bool) -> np.ndarray:
    """Rename GPUs inside each node so that the smallest item of a GPU grows with the GPU (the symmetry
    breaking of the model); per layer where the layers decompose (``ep``), from layer 0 for all layers where
    they are coupled (``coherent``)."""
    out = gpu_LP.copy()
    gpn = inst.G // inst.N

    def perm_of(row: np.ndarray) -> np.ndarray:
        first = np.full(inst.G, inst.P)
        np.minimum.at(first, row, np.arange(inst.P))
        perm = np.empty(inst.G, dtype=np.int64)
        for n in range(inst.N):
            gs = np.arange(n * gpn, (n + 1) * gpn)
            perm[gs[np.argsort(first[gs], kind="stable")]] = gs
        return perm

    if per_layer:
        for l in range(inst.L):
            out[l] = perm_of(gpu_LP[l])[gpu_LP[l]]
    else:
        out = perm_of(gpu_LP[0])[gpu_LP]
    return out


@dataclass
class EpIndicators:
    """ep: the indicators of the token types of the model's layers."""

    same_gpu: dict[tuple[int, int, int], list] = field(default_factory=dict)   # [l, i, j][g]: i and j both on g
    same_node: dict[tuple[int, int, int], list] = field(default_factory=dict)  # [l, i, j][n]: both on node n
    reaches_gpu: dict[tuple[int, int], list] = field(default_factory=dict)     # [l, x][g] (top-k > 2): x reaches g
    reaches_node: dict[tuple[int, int], list] = field(default_factory=dict)    # [l, x][n]


@dataclass
class CoherentIndicators:
    """coherent: the indicators of the item pairs of adjacent layers with transitions."""

    kept_gpu: dict[tuple[int, int, int], list] = field(default_factory=dict)   # [l, i, j][g]: i (l), j (l+1) on g
    kept_node: dict[tuple[int, int, int], list] = field(default_factory=dict)  # [l, i, j][n]: both on node n


class CpsatModel:
    """The CP-SAT model of some layers of an instance (all layers in ``coherent`` mode)."""

    def __init__(self, inst: Instance, layers: list[int], hint_LP: np.ndarray | None,
                 wall: WallGuard | None = None, share: CpsatModel | None = None) -> None:
        """The model of ``layers``, hinted with ``hint_LP``; raises ``BuildCut`` if ``wall`` fires meanwhile.
        With ``share`` (another scenario's model of the same items: ``RobustCpsatModel``), this instance's
        largest loads, traffic and objective are added to that model, on its placement variables, and not
        minimised: ``objective`` and ``const`` hold them."""
        self.inst, self.layers, self.wall = inst, layers, wall
        model = self.model = cp_model.CpModel() if share is None else share.model
        G, N, P, s = inst.G, inst.N, inst.P, inst.s
        gpn = G // N
        self.ep: EpIndicators | None = None
        self.coherent: CoherentIndicators | None = None

        # Data: integer loads and caps; integer objective coefficients (weights are multiples of 0.001). Loads
        # that are not whole (rates, a load split among copies) are scaled by F and rounded: a rounded model
        # proves nothing, and its cap gets the s/2 units a GPU's rounded load may differ by.
        F = load_scale(inst.load_LP)
        self.scale = inst.scale() * F
        c_gpu, c_node, c_bal = (int(round(c * self.scale)) for c in (inst.c_gpu, inst.c_node, inst.c_bal / F))
        load = self.load = np.rint(inst.load_LP * F).astype(np.int64)
        self.rounded = not np.array_equal(load, inst.load_LP * F)
        self.const = 0.0  # the objective's constant part, in model units
        objective: list[Any] = []

        # Variables: on_gpu[l][i][g] = item i of layer l sits on GPU g; max_load[l] = the layer's largest load.
        self.on_gpu = {l: [[model.new_bool_var(f"x_{l}_{i}_{g}") for g in range(G)] for i in range(P)]
                       for l in layers} if share is None else share.on_gpu
        on_gpu = self.on_gpu
        self.max_load = {}
        for l in layers:
            cap = int(math.floor(inst.cap_L[l] * F + 1e-9)) + (s + 1) // 2 * self.rounded \
                if np.isfinite(inst.cap_L[l]) else int(load[l].sum())
            lb = int(math.ceil(load[l].sum() / G - 1e-9))
            self.max_load[l] = model.new_int_var(min(lb, cap), cap, f"maxload_{l}")
            objective.append(c_bal * self.max_load[l])
        if share is None:
            self._assignment_constraints()
        # Every GPU's load is at most the layer's largest load, which the cap bounds.
        for l in layers:
            for g in range(G):
                model.add(sum(int(load[l, i]) * on_gpu[l][i][g] for i in range(P)) <= self.max_load[l])
        if share is None:
            self._copy_constraints()

        # Variables, constraints and objective terms of the traffic: ep, the GPUs and nodes each token type
        # reaches; coherent, the transitions kept on one GPU and node.
        if inst.traffic and inst.mode is TrafficMode.EP:
            self.ep = EpIndicators()
            for l in layers:
                self._ep_layer(l, c_gpu, c_node, objective)
        elif inst.traffic:
            self.coherent = CoherentIndicators()
            for l in layers[:-1]:
                self._coherent_pair(l, c_gpu, c_node, objective)
        self._check_clock()

        # Objective: the weighted sum of the layers' largest loads and the traffic.
        self.objective = sum(objective)
        if share is None:
            model.minimize(self.objective)
        if hint_LP is not None:
            self._hint(hint_LP, placement=share is None)

    def _assignment_constraints(self) -> None:
        """Constraints on the placement variables alone: a valid assignment of items to slots."""
        inst, model, on_gpu = self.inst, self.model, self.on_gpu
        # Constraints: each item sits on exactly one GPU.
        for l in self.layers:
            for i in range(inst.P):
                model.add_exactly_one(on_gpu[l][i])
        # Each GPU holds exactly s items.
        for l in self.layers:
            for g in range(inst.G):
                model.add(sum(on_gpu[l][i][g] for i in range(inst.P)) == inst.s)

    def _copy_constraints(self) -> None:
        """Constraints on the placement variables alone: copies and symmetric GPUs."""
        inst, model, on_gpu, layers = self.inst, self.model, self.on_gpu, self.layers
        G, N, P = inst.G, inst.N, inst.P
        gpn = G // N
        # An expert's copies sit on GPUs in copy order, so the replica rule serves the tokens counted; and on
        # different GPUs (``copy_step`` 1), since a second copy on a GPU only splits that GPU's tokens.
        prev, _ = inst.prev_next_LP()
        step = inst.copy_step
        for l in layers:
            for i in np.nonzero(prev[l] >= 0)[0]:
                j = int(prev[l, i])
                model.add(sum(g * on_gpu[l][j][g] for g in range(G)) + step
                          <= sum(g * on_gpu[l][i][g] for g in range(G)))
        # At most one copy of an expert per GPU (implied by the order above; stated for propagation).
        if inst.redundant and step:
            for l in layers:
                for e in np.nonzero(inst.cnt_LE[l] > 1)[0]:
                    copies = range(inst.base_LE[l, e], inst.base_LE[l, e] + inst.cnt_LE[l, e])
                    for g in range(G):
                        model.add_at_most_one(on_gpu[l][i][g] for i in copies)
        # GPUs of a node are interchangeable: the smallest item on a GPU grows with the GPU (without copies,
        # whose order would conflict); in every layer where the layers decompose (ep), in the first where the
        # traffic couples them (coherent: renaming one layer's GPUs alone would change its transitions).
        if not inst.redundant:
            for l in (layers if inst.mode.decomposes_by_layer else layers[:1]):
                for g in range(1, G):
                    if g % gpn == 0:
                        continue
                    for i in range(P):
                        model.add(on_gpu[l][i][g] <= sum(on_gpu[l][j][g - 1] for j in range(i)))

    def _check_clock(self) -> None:
        """Stop the build (``BuildCut``) once the wall clock has run out."""
        if self.wall is not None and self.wall.over():
            raise BuildCut

    def _coherent_pair(self, l: int, c_gpu: int, c_node: int, objective: list[Any]) -> None:
        """coherent, layers l and l+1: hops = transitions - those kept on one GPU (node)."""
        inst, model, on_gpu, ind = self.inst, self.model, self.on_gpu, self.coherent
        G, N, s = inst.G, inst.N, inst.s
        gpn = G // N
        tr = np.rint(inst.trans_LPP[l]).astype(np.int64)
        self.const += float(tr.sum()) * (c_gpu + c_node)
        per_gpu_a: dict[tuple[int, int], list] = {}
        per_gpu_b: dict[tuple[int, int], list] = {}
        per_node_a: dict[tuple[int, int], list] = {}
        per_node_b: dict[tuple[int, int], list] = {}
        for i, j in np.argwhere(tr > 0):
            i, j = int(i), int(j)
            self._check_clock()
            # Variables: kept[g] = item i of layer l and item j of layer l+1 both sit on GPU g.
            kept = [model.new_bool_var(f"z_{l}_{i}_{j}_{g}") for g in range(G)]
            # Constraints: a pair is kept on GPU g only if both items sit there, on one GPU at most.
            for g in range(G):
                model.add_implication(kept[g], on_gpu[l][i][g])
                model.add_implication(kept[g], on_gpu[l + 1][j][g])
                per_gpu_a.setdefault((i, g), []).append(kept[g])
                per_gpu_b.setdefault((j, g), []).append(kept[g])
            model.add(sum(kept) <= 1)
            ind.kept_gpu[l, i, j] = kept
            objective.append(-int(c_gpu * tr[i, j]) * sum(kept))
            if N > 1:
                # The same per node: kept_n[n] only if both items sit on node n.
                kept_n = [model.new_bool_var(f"zn_{l}_{i}_{j}_{n}") for n in range(N)]
                for n in range(N):
                    gs = range(n * gpn, (n + 1) * gpn)
                    model.add(kept_n[n] <= sum(on_gpu[l][i][g] for g in gs))
                    model.add(kept_n[n] <= sum(on_gpu[l + 1][j][g] for g in gs))
                    per_node_a.setdefault((i, n), []).append(kept_n[n])
                    per_node_b.setdefault((j, n), []).append(kept_n[n])
                model.add(sum(kept_n) <= 1)
                ind.kept_node[l, i, j] = kept_n
                objective.append(-int(c_node * tr[i, j]) * sum(kept_n))
        # An item shares its GPU with at most s items of the other layer (its node with at most s G/N).
        for (i, g), ks in per_gpu_a.items():
            model.add(sum(ks) <= s * on_gpu[l][i][g])
        for (j, g), ks in per_gpu_b.items():
            model.add(sum(ks) <= s * on_gpu[l + 1][j][g])
        for ks in per_node_a.values():
            model.add(sum(ks) <= s * gpn)
        for ks in per_node_b.values():
            model.add(sum(ks) <= s * gpn)

    def _ep_layer(self, l: int, c_gpu: int, c_node: int, objective: list[Any]) -> None:
        """ep, layer l: the distinct GPUs and nodes of every token type."""
        inst, model, on_gpu, ind = self.inst, self.model, self.on_gpu, self.ep
        G, N, s = inst.G, inst.N, inst.s
        gpn = G // N
        t = inst.types_L[l]
        self.const += self.scale * inst.offset_L[l] * (inst.c_gpu + inst.c_node)
        X, K = t.items_XK.shape
        cnt = np.rint(t.count_X).astype(np.int64)
        self.const += (c_gpu + c_node) * float(cnt.sum()) * K
        if K == 1 or X == 0:
            return
        W = inst.pair_weights(l)
        iu, ju = np.nonzero(np.triu(W, k=1) > 0)
        per_gpu: dict[tuple[int, int], list] = {}
        per_node: dict[tuple[int, int], list] = {}
        same: dict[tuple[int, int], Any] = {}
        same_n: dict[tuple[int, int], Any] = {}
        for i, j in zip(iu.tolist(), ju.tolist()):
            self._check_clock()
            # Variables: both[g] = items i and j of a common type both sit on GPU g.
            both = [model.new_bool_var(f"y_{l}_{i}_{j}_{g}") for g in range(G)]
            # Constraints: a pair is together on GPU g only if both items sit there, on one GPU at most.
            for g in range(G):
                model.add_implication(both[g], on_gpu[l][i][g])
                model.add_implication(both[g], on_gpu[l][j][g])
                per_gpu.setdefault((i, g), []).append(both[g])
                per_gpu.setdefault((j, g), []).append(both[g])
            model.add(sum(both) <= 1)
            ind.same_gpu[l, i, j] = both
            same[i, j] = sum(both)
            if N > 1:
                # The same per node: both_n[n] only if both items sit on node n.
                both_n = [model.new_bool_var(f"yn_{l}_{i}_{j}_{n}") for n in range(N)]
                for n in range(N):
                    gs = range(n * gpn, (n + 1) * gpn)
                    model.add(both_n[n] <= sum(on_gpu[l][i][g] for g in gs))
                    model.add(both_n[n] <= sum(on_gpu[l][j][g] for g in gs))
                    per_node.setdefault((i, n), []).append(both_n[n])
                    per_node.setdefault((j, n), []).append(both_n[n])
                model.add(sum(both_n) <= 1)
                ind.same_node[l, i, j] = both_n
                same_n[i, j] = sum(both_n)
        # An item shares its GPU with at most s - 1 others (its node with s G/N - 1): co-located pairs.
        for (i, g), bs in per_gpu.items():
            model.add(sum(bs) <= (s - 1) * on_gpu[l][i][g])
        for bs in per_node.values():
            model.add(sum(bs) <= s * gpn - 1)
        if K == 2:
            # Objective (top-2): a token-layer reaches 2 GPUs unless its pair is co-located (exact).
            for (i, j), v in same.items():
                objective.append(-int(c_gpu * round(W[i, j])) * v)
            for (i, j), v in same_n.items():
                objective.append(-int(c_node * round(W[i, j])) * v)
            return
        self.const -= (c_gpu + c_node) * float(cnt.sum()) * K
        for x in range(X):
            self._check_clock()
            items = [int(i) for i in t.items_XK[x]]
            # Variables (top-k > 2): reaches[g] = type x reaches GPU g.
            reaches = [model.new_bool_var(f"u_{l}_{x}_{g}") for g in range(G)]
            # Constraints: a type reaches every GPU of its items, and at least K - (its co-located pairs) GPUs
            # (a valid cut), and at least K / s.
            for g in range(G):
                for i in items:
                    model.add_implication(on_gpu[l][i][g], reaches[g])
            pairs = [same[a, b] for k, a in enumerate(items) for b in items[k + 1:] if (a, b) in same]
            model.add(sum(reaches) >= K - sum(pairs))
            model.add(sum(reaches) >= math.ceil(K / s))
            ind.reaches_gpu[l, x] = reaches
            objective.append(int(c_gpu * cnt[x]) * sum(reaches))
            if N > 1:
                # The same per node: a type reaches a node if it reaches one of its GPUs.
                reaches_n = [model.new_bool_var(f"v_{l}_{x}_{n}") for n in range(N)]
                for g in range(G):
                    model.add_implication(reaches[g], reaches_n[g // gpn])
                pairs_n = [same_n[a, b] for k, a in enumerate(items) for b in items[k + 1:] if (a, b) in same_n]
                model.add(sum(reaches_n) >= K - sum(pairs_n))
                ind.reaches_node[l, x] = reaches_n
                objective.append(int(c_node * cnt[x]) * sum(reaches_n))
            else:
                self.const += c_node * float(cnt[x])

    def _hint(self, gpu_LP: np.ndarray, placement: bool = True) -> None:
        """The warm start: every variable's value for the assignment ``gpu_LP`` (the placement variables' too
        unless ``placement`` is False: another scenario's model hinted them)."""
        inst, model = self.inst, self.model
        node = inst.node_of_gpu
        for l in self.layers:
            self._check_clock()
            for i in range(inst.P if placement else 0):
                for g in range(inst.G):
                    model.add_hint(self.on_gpu[l][i][g], int(gpu_LP[l, i] == g))
            model.add_hint(self.max_load[l],
                           int(np.bincount(gpu_LP[l], weights=self.load[l], minlength=inst.G).max()))
        if self.ep is not None:
            ep = self.ep
            for (l, x), reaches in ep.reaches_gpu.items():
                on = set(gpu_LP[l, inst.types_L[l].items_XK[x]].tolist())
                for g in range(inst.G):
                    model.add_hint(reaches[g], int(g in on))
                if (l, x) in ep.reaches_node:
                    nodes = {int(node[g]) for g in on}
                    for n, v in enumerate(ep.reaches_node[l, x]):
                        model.add_hint(v, int(n in nodes))
            for (l, i, j), both in ep.same_gpu.items():
                for g in range(inst.G):
                    model.add_hint(both[g], int(gpu_LP[l, i] == g and gpu_LP[l, j] == g))
                if (l, i, j) in ep.same_node:
                    for n, v in enumerate(ep.same_node[l, i, j]):
                        model.add_hint(v, int(node[gpu_LP[l, i]] == n and node[gpu_LP[l, j]] == n))
        if self.coherent is not None:
            co = self.coherent
            for (l, i, j), kept in co.kept_gpu.items():
                for g in range(inst.G):
                    model.add_hint(kept[g], int(gpu_LP[l, i] == g and gpu_LP[l + 1, j] == g))
                if (l, i, j) in co.kept_node:
                    for n, v in enumerate(co.kept_node[l, i, j]):
                        model.add_hint(v, int(node[gpu_LP[l, i]] == n and node[gpu_LP[l + 1, j]] == n))

    def solve(self, det_time: float, seed: int, num_workers: int) -> dict[str, Any]:
        """Solve within ``det_time`` deterministic seconds (wall-clock safety: det_time / DET_PER_SECOND x
        WALL_SAFETY, and no later than the model's ``wall``); returns status name, assignment of the model's layers (or None), value and bound (in
        objective units, constant included), and how it stopped."""
        solver = cp_model.CpSolver()
        params = solver.parameters
        params.num_workers = num_workers
        params.random_seed = seed
        if num_workers > 1:
            params.interleave_search = True
        params.max_deterministic_time = max(det_time, 0.005)
        if wall_clock_on():  # (off: deterministic time only, common.nominal_budgets_only)
            params.max_time_in_seconds = max(det_time, 0.005) / DET_PER_SECOND * WALL_SAFETY
            if self.wall is not None:
                params.max_time_in_seconds = max(min(params.max_time_in_seconds, self.wall.left()), 0.005)
        t0 = time.perf_counter()
        status = solver.solve(self.model)
        wall = time.perf_counter() - t0
        name = solver.status_name(status)
        res: dict[str, Any] = {"status": name, "gpu": None, "wall_s": wall,
                               "deterministic_time": solver.deterministic_time}
        res["stopped_by_wall_clock"] = bool(wall >= params.max_time_in_seconds * 0.98
                                            and solver.deterministic_time < params.max_deterministic_time)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            gpu = {}
            for l in self.layers:
                gpu[l] = np.array([next(g for g in range(self.inst.G) if solver.boolean_value(self.on_gpu[l][i][g]))
                                   for i in range(self.inst.P)])
            if self.rounded:  # keep the hint of a layer whose rounded loads hid a GPU above the true cap
                gpu = {l: row for l, row in gpu.items()
                       if layer_loads(self.inst, l, row).max() <= self.inst.cap_L[l] * (1 + 1e-9)}
            res["gpu"] = gpu
            res["value"] = (solver.objective_value + self.const) / self.scale
            res["bound"] = None if self.rounded else (solver.best_objective_bound + self.const) / self.scale
            res["model_bound"] = solver.best_objective_bound
            res["proven"] = status == cp_model.OPTIMAL and not self.rounded
        elif status == cp_model.UNKNOWN:
            # No solution within the budget: CP-SAT's bound is not meaningful then; the hint stays.
            res["bound"] = None
            res["proven"] = False
        else:
            raise MoeplaceError(f"cpsat: CP-SAT ended with status {name}")
        return res


# The robust model is tried up to this many boolean variables (all scenarios together), as auto's CP-SAT.
ROBUST_MAX_VARIABLES = 60_000
# Scenario weights become integer coefficients of at most this (the largest scenario weight per model unit).
ROBUST_COEFFICIENT = 1000


class RobustCpsatModel:
    """One model of several scenarios of the same items (``solvers/robust.py``): the placement variables and
    their constraints once, each scenario's largest loads and traffic on them (``CpsatModel(share=...)``), and
    the worst (or the sum) of the scenarios' objectives per token minimised.

    Data: scenario s's objective in its model's units is ``objective_s + const_s`` (``scale_s`` units per unit
    of the project objective) and weighs ``w_s`` (1 / its tokens): its robust term is ``w_s / scale_s`` times
    it. CP-SAT needs integers, so the term becomes ``coef_s x objective_s + floor(coef_s x const_s)`` with
    ``coef_s`` = ROBUST_COEFFICIENT x that ratio / the largest ratio, rounded. Every term is then at most
    ``unit`` x the true one, where ``unit`` = max over s of coef_s x scale_s / w_s, so CP-SAT's bound / unit
    (worst) or / (S x unit) (mean) is a valid bound of the robust objective; its placements are judged on the
    exact objective by the caller.
    """

    def __init__(self, insts: list[Instance], w_s: np.ndarray, mean: bool, hint_LP: np.ndarray,
                 wall: WallGuard | None) -> None:
        layers = list(range(insts[0].L))
        # Variables and constraints: the first scenario's model holds the placement; the others add theirs.
        self.parts = [CpsatModel(insts[0], layers, None, wall, share=None)]
        self.parts += [CpsatModel(inst, layers, None, wall, share=self.parts[0]) for inst in insts[1:]]
        model = self.parts[0].model
        self.mean = mean
        self.rounded = any(p.rounded for p in self.parts)
        ratio = [float(w) / p.scale for p, w in zip(self.parts, w_s)]
        self.coef = [max(int(round(ROBUST_COEFFICIENT * r / max(ratio))), 1) for r in ratio]
        self.unit = max(c / r for c, r in zip(self.coef, ratio))
        scenario = [c * p.objective + math.floor(c * p.const) for c, p in zip(self.coef, self.parts)]
        # Objective (replacing the first model's): the worst scenario, a variable at least every scenario's
        # term, or the sum of the terms.
        if mean:
            model.minimize(sum(scenario))
        else:
            worst = model.new_int_var(-(2**50), 2**50, "worst_scenario")
            for term in scenario:
                model.add(worst >= term)
            model.minimize(worst)
            # (hinted just above the hint's worst term, which the exact objective gives up to rounding)
            at_hint = [c * (terms(p.inst, hint_LP).value * p.scale - p.const) + math.floor(c * p.const)
                       for c, p in zip(self.coef, self.parts)]
            model.add_hint(worst, int(math.ceil(max(at_hint))) + max(self.coef))
        for p in self.parts:
            p._hint(hint_LP, placement=p is self.parts[0])

    def solve(self, det_time: float, seed: int, num_workers: int) -> tuple[np.ndarray | None, float | None, str]:
        """(the assignment CP-SAT found or None, a valid bound of the robust objective or None, status)."""
        res = self.parts[0].solve(det_time, seed, num_workers)
        if res["gpu"] is None or self.rounded:
            return None if self.rounded else res["gpu"], None, res["status"]
        gpu = np.stack([res["gpu"][l] for l in self.parts[0].layers])
        bound = res["model_bound"] / (self.unit * (len(self.parts) if self.mean else 1))
        return gpu, bound, res["status"]


def run_cpsat_robust(insts: list[Instance], w_s: np.ndarray, mean: bool, hint_LP: np.ndarray,
                     options: SolveOptions, time_s: float, wall: WallGuard) -> Outcome:
    """The robust model (``RobustCpsatModel``) for ``time_s`` nominal seconds, warm-started from ``hint_LP``.
    The hint comes back, with no bound and ``extra["robust_cpsat"]["status"]`` saying why, when the model is
    larger than ROBUST_MAX_VARIABLES, cannot be built before the deadline, or CP-SAT refuses it or finds
    nothing. The outcome's bound is valid for these items (their copies); ``proven`` is never claimed (the
    coefficients are rounded: a zero gap on the exact objective proves it)."""
    layers = list(range(insts[0].L))
    size = sum(model_size(inst, layers) for inst in insts)
    status = None
    if size > ROBUST_MAX_VARIABLES:
        status = f"skipped: {size} variables, more than {ROBUST_MAX_VARIABLES}"
    elif size / BUILD_VARS_PER_SECOND >= wall.left():
        status = "skipped: no time left to build the model"
    else:
        try:
            gpu, bound, status = RobustCpsatModel(insts, w_s, mean, hint_LP, wall).solve(
                time_s * DET_PER_SECOND, options.seed, workers(options))
            if gpu is not None:
                return Outcome(gpu, bound=bound, extra={"robust_cpsat": {"status": status, "variables": size}})
        except BuildCut:
            status = "skipped: the deadline overtook the build"
        except MoeplaceError as exc:  # a model CP-SAT refused (e.g. infeasible): the search's result stands
            status = f"skipped: {exc}"
    return Outcome(hint_LP, extra={"robust_cpsat": {"status": status, "variables": size}})


def run_cpsat(inst: Instance, hint_LP: np.ndarray, options: SolveOptions, time_s: float,
              layers: list[int] | None = None, wall: WallGuard | None = None) -> Outcome:
    """CP-SAT on the instance (ep: layer by layer), warm-started from ``hint_LP``, for ``time_s`` nominal
    seconds (deterministic time ``time_s x DET_PER_SECOND``, split evenly among the blocks, what a block
    leaves passing to the next). The hint is kept where CP-SAT finds nothing within its budget. With ``wall``,
    a block whose build (``build_seconds``) would not end before the deadline is not built, a build the
    deadline overtakes is dropped, and no solve runs past it (status ``skipped``: the hint, no bound)."""
    layers = list(range(inst.L)) if layers is None else layers
    size = model_size(inst, layers)
    if size > MAX_LITERALS:
        raise ValueError(f"cpsat: the model would have {size} boolean variables (layers {inst.L} x items "
                         f"{inst.P} x GPUs {inst.G} plus traffic indicators), more than {MAX_LITERALS}; "
                         f"use --solver auto, which decomposes large instances")
    hint = canonical(inst, hint_LP, per_layer=inst.mode.decomposes_by_layer) if not inst.redundant else hint_LP.copy()
    gpu = hint.copy()
    blocks = [[l] for l in layers] if inst.decomposes else [layers]
    proven = True
    bound = 0.0
    statuses: dict[str, int] = {}
    det_total = time_s * DET_PER_SECOND
    det_used = 0.0
    wall_stop = False
    for k, block in enumerate(blocks):
        share = max(det_total - det_used, 0.0) / (len(blocks) - k)
        try:
            if wall is not None and build_seconds(inst, block) >= wall.left():
                raise BuildCut
            res = CpsatModel(inst, block, hint, wall).solve(share, options.seed + block[0], workers(options))
        except BuildCut:
            res = {"status": "skipped", "gpu": None, "bound": None, "proven": False, "deterministic_time": 0.0,
                   "stopped_by_wall_clock": True}
        statuses[res["status"]] = statuses.get(res["status"], 0) + 1
        det_used += res["deterministic_time"]
        wall_stop |= res["stopped_by_wall_clock"]
        if res["gpu"] is not None:
            for l, row in res["gpu"].items():
                gpu[l] = row
        proven &= bool(res["proven"])
        bound = None if bound is None or res["bound"] is None else bound + res["bound"]
    extra = {"cpsat": {"statuses": statuses, "deterministic_time": round(det_used, 3), "blocks": len(blocks),
                       "stopped_by_wall_clock": wall_stop, "variables": size}}
    # A block's bound covers its own layers' terms; they add up to a bound of the whole.
    return Outcome(gpu, proven=proven, bound=bound if len(layers) == inst.L else None, extra=extra)


@solver("cpsat", summary="one joint CP-SAT model of balance, traffic and redundant copies, with CP-SAT's bound",
        params=("balance_weight", "intra_weight", "inter_weight", "max_imbalance"), token_paths=True, compiled=True,
        robust=lambda scn, options: solve_robust(scn, options, "cpsat", cpsat=run_cpsat_robust))
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    t0 = time.monotonic()
    inst = build_instance(problem, options)
    name, hint, _ = best_start(inst, problem)
    # The wall-clock deadline (docs/solvers.md, "Time limits"): CP-SAT's own time as in auto, its model's build
    # and solve cut at SEARCH_END of the limit less what finishing takes.
    wall = WallGuard.until(t0 + SEARCH_END * options.time_limit_s - finish_seconds(inst, problem, hint))
    out = run_cpsat(inst, hint, options, options.time_limit_s, wall=wall)
    out.extra["warm_start"] = name
    return finish(inst, out, "cpsat", start)
