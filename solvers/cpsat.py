"""``cpsat``: one joint CP-SAT model of load balance, traffic and redundant copies (OR-Tools).

The model minimises the project's objective (``placer/core/objective.py``, ``docs/solvers.md``) over the items
of ``solvers/instance.py`` (copies of the hottest experts are made by EPLB's rule first; the model places
them):

- balance: the largest GPU load of every layer (a variable per layer, at most the cap);
- ``ep``: for every token type (a distinct set of items chosen by tokens) and GPU, an indicator that the
  type reaches that GPU (and node): the distinct GPUs and nodes of a token-layer, exact for any top-k;
- ``coherent``: for every pair of items of adjacent layers with transitions and every GPU (and node), an
  indicator that both sit there: the pair hops are the transitions not covered;
- intra- vs inter-node costs from the ``Weights`` (defaults from the topology's bandwidths).

It is warm-started from the best feasible baseline, runs ``threads`` workers with a deterministic time
budget derived from ``--time-limit``, and reports CP-SAT's bound and gap (status OPTIMAL only when CP-SAT
proves it). In ``ep`` mode the model is a sum of independent per-layer blocks, which are solved one after
another with the time split among them; the sum of the blocks' optima is the optimum and the sum of their
bounds a bound.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

from placer.core.errors import MoeplaceError
from placer.core.mode import TrafficMode
from placer.core.placement import Placement
from solvers.assignment import Outcome, finish, layer_loads
from solvers.common import DET_PER_SECOND, WALL_SAFETY, best_start, workers
from solvers.instance import Instance, build_instance
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver

MAX_LITERALS = 2_000_000  # a larger model is refused with a message (use ``auto``)


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
    breaking of the model); per layer in ``ep`` mode, from layer 0 for all layers in ``coherent`` mode."""
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


class CpsatModel:
    """The CP-SAT model of some layers of an instance (all layers in ``coherent`` mode)."""

    def __init__(self, inst: Instance, layers: list[int], hint_LP: np.ndarray | None) -> None:
        self.inst, self.layers = inst, layers
        m = self.model = cp_model.CpModel()
        G, N, P, s = inst.G, inst.N, inst.P, inst.s
        gpn = G // N
        # Data: integer loads and caps; integer objective coefficients (weights are multiples of 0.001). Loads
        # that are not whole (rates, a load split among copies) are scaled by F and rounded: a rounded model
        # proves nothing, and its cap gets the s/2 units a GPU's rounded load may differ by.
        F = load_scale(inst.load_LP)
        S = self.S = inst.scale() * F
        cg, cn, cb = (int(round(c * S)) for c in (inst.c_gpu, inst.c_node, inst.c_bal / F))
        load = self.load = np.rint(inst.load_LP * F).astype(np.int64)
        self.rounded = not np.array_equal(load, inst.load_LP * F)
        self.const = 0.0
        objective: list[Any] = []

        # Variables: x_{l}_{i}_{g} = item i of layer l sits on GPU g; maxload_{l} = the layer's largest load.
        self.x = {l: [[m.NewBoolVar(f"x_{l}_{i}_{g}") for g in range(G)] for i in range(P)] for l in layers}
        self.maxload = {}
        for l in layers:
            cap = int(math.floor(inst.cap_L[l] * F + 1e-9)) + (s + 1) // 2 * self.rounded \
                if np.isfinite(inst.cap_L[l]) else int(load[l].sum())
            lb = int(math.ceil(load[l].sum() / G - 1e-9))
            self.maxload[l] = m.NewIntVar(min(lb, cap), cap, f"maxload_{l}")
            objective.append(cb * self.maxload[l])

        # Constraints: each item sits on exactly one GPU.
        for l in layers:
            for i in range(P):
                m.AddExactlyOne(self.x[l][i])
        # Each GPU holds exactly s items.
        for l in layers:
            for g in range(G):
                m.Add(sum(self.x[l][i][g] for i in range(P)) == s)
        # Every GPU's load is at most the layer's largest load, which the cap bounds.
        for l in layers:
            for g in range(G):
                m.Add(sum(int(load[l, i]) * self.x[l][i][g] for i in range(P)) <= self.maxload[l])
        # An expert's copies sit on GPUs in copy order, so the replica rule serves the tokens counted; and on
        # different GPUs (``copy_step`` 1), since a second copy on a GPU only splits that GPU's tokens.
        prev, _ = inst.prev_next_LP()
        step = inst.copy_step
        for l in layers:
            for i in np.nonzero(prev[l] >= 0)[0]:
                j = int(prev[l, i])
                m.Add(sum(g * self.x[l][j][g] for g in range(G)) + step <= sum(g * self.x[l][i][g] for g in range(G)))
        # At most one copy of an expert per GPU (implied by the order above; stated for propagation).
        if inst.redundant and step:
            for l in layers:
                for e in np.nonzero(inst.cnt_LE[l] > 1)[0]:
                    copies = range(inst.base_LE[l, e], inst.base_LE[l, e] + inst.cnt_LE[l, e])
                    for g in range(G):
                        m.AddAtMostOne(self.x[l][i][g] for i in copies)
        # GPUs of a node are interchangeable: the smallest item on a GPU grows with the GPU (without copies,
        # whose order would conflict); every layer in ep mode, layer 0 in coherent mode.
        self.symmetry = not inst.redundant
        if self.symmetry:
            for l in (layers if inst.mode is TrafficMode.EP else layers[:1]):
                for g in range(1, G):
                    if g % gpn == 0:
                        continue
                    for i in range(P):
                        m.Add(self.x[l][i][g] <= sum(self.x[l][j][g - 1] for j in range(i)))

        if inst.traffic and inst.mode is TrafficMode.EP:
            self._ep_traffic(layers, cg, cn, objective)
        elif inst.traffic:
            # coherent: z_{l}_{i}_{j}_{g} only if item i of layer l and item j of layer l+1 both sit on GPU g
            # (zn: on node n); each item shares its GPU with at most s items of the other layer (its node
            # with at most s G/N). Hops = transitions - those kept on one GPU.
            self.z: dict[tuple[int, int, int], list] = {}
            self.zn: dict[tuple[int, int, int], list] = {}
            for l in layers[:-1]:
                tr = np.rint(inst.trans_LPP[l]).astype(np.int64)
                self.const += float(tr.sum()) * (cg + cn)
                pairs = np.argwhere(tr > 0)
                deg_a: dict[tuple[int, int], list] = {}
                deg_b: dict[tuple[int, int], list] = {}
                dna: dict[tuple[int, int], list] = {}
                dnb: dict[tuple[int, int], list] = {}
                for i, j in pairs:
                    i, j = int(i), int(j)
                    z = [m.NewBoolVar(f"z_{l}_{i}_{j}_{g}") for g in range(G)]
                    for g in range(G):
                        m.AddImplication(z[g], self.x[l][i][g])
                        m.AddImplication(z[g], self.x[l + 1][j][g])
                        deg_a.setdefault((i, g), []).append(z[g])
                        deg_b.setdefault((j, g), []).append(z[g])
                    m.Add(sum(z) <= 1)
                    self.z[l, i, j] = z
                    objective.append(-int(cg * tr[i, j]) * sum(z))
                    if N > 1:
                        zn = [m.NewBoolVar(f"zn_{l}_{i}_{j}_{n}") for n in range(N)]
                        for n in range(N):
                            gs = range(n * gpn, (n + 1) * gpn)
                            m.Add(zn[n] <= sum(self.x[l][i][g] for g in gs))
                            m.Add(zn[n] <= sum(self.x[l + 1][j][g] for g in gs))
                            dna.setdefault((i, n), []).append(zn[n])
                            dnb.setdefault((j, n), []).append(zn[n])
                        m.Add(sum(zn) <= 1)
                        self.zn[l, i, j] = zn
                        objective.append(-int(cn * tr[i, j]) * sum(zn))
                for (i, g), zs in deg_a.items():
                    m.Add(sum(zs) <= s * self.x[l][i][g])
                for (j, g), zs in deg_b.items():
                    m.Add(sum(zs) <= s * self.x[l + 1][j][g])
                for (i, n), zs in dna.items():
                    m.Add(sum(zs) <= s * gpn)
                for (j, n), zs in dnb.items():
                    m.Add(sum(zs) <= s * gpn)

        # Objective: the weighted sum of the layers' largest loads and the traffic.
        m.Minimize(sum(objective))
        if hint_LP is not None:
            self._hint(hint_LP)

    def _ep_traffic(self, layers: list[int], cg: int, cn: int, objective: list[Any]) -> None:
        """ep: distinct GPUs and nodes of every token type."""
        inst, m = self.inst, self.model
        G, N, s, S = inst.G, inst.N, inst.s, self.S
        gpn = G // N
        self.u: dict[tuple[int, int], list] = {}
        self.v: dict[tuple[int, int], list] = {}
        self.y: dict[tuple[int, int, int], list] = {}
        self.yn: dict[tuple[int, int, int], list] = {}
        for l in layers:
            t = inst.types_L[l]
            self.const += S * inst.offset_L[l] * (inst.c_gpu + inst.c_node)
            X, K = t.items_XK.shape
            cnt = np.rint(t.count_X).astype(np.int64)
            self.const += (cg + cn) * float(cnt.sum()) * K
            if K == 1 or X == 0:
                continue
            # y_{l}_{i}_{j}_{g}: items i and j of a common type both sit on GPU g (yn: on node n); an item
            # shares its GPU with at most s - 1 others (its node with s G/N - 1): co-located pairs.
            W = inst.pair_weights(l)
            iu, ju = np.nonzero(np.triu(W, k=1) > 0)
            deg: dict[tuple[int, int], list] = {}
            degn: dict[tuple[int, int], list] = {}
            same: dict[tuple[int, int], Any] = {}
            samen: dict[tuple[int, int], Any] = {}
            for i, j in zip(iu.tolist(), ju.tolist()):
                y = [m.NewBoolVar(f"y_{l}_{i}_{j}_{g}") for g in range(G)]
                for g in range(G):
                    m.AddImplication(y[g], self.x[l][i][g])
                    m.AddImplication(y[g], self.x[l][j][g])
                    deg.setdefault((i, g), []).append(y[g])
                    deg.setdefault((j, g), []).append(y[g])
                m.Add(sum(y) <= 1)
                self.y[l, i, j] = y
                same[i, j] = sum(y)
                if N > 1:
                    yn = [m.NewBoolVar(f"yn_{l}_{i}_{j}_{n}") for n in range(N)]
                    for n in range(N):
                        gs = range(n * gpn, (n + 1) * gpn)
                        m.Add(yn[n] <= sum(self.x[l][i][g] for g in gs))
                        m.Add(yn[n] <= sum(self.x[l][j][g] for g in gs))
                        degn.setdefault((i, n), []).append(yn[n])
                        degn.setdefault((j, n), []).append(yn[n])
                    m.Add(sum(yn) <= 1)
                    self.yn[l, i, j] = yn
                    samen[i, j] = sum(yn)
            for (i, g), ys in deg.items():
                m.Add(sum(ys) <= (s - 1) * self.x[l][i][g])
            for (i, n), ys in degn.items():
                m.Add(sum(ys) <= s * gpn - 1)
            if K == 2:
                # Top-2: a token-layer reaches 2 GPUs unless its pair is co-located (exact).
                for (i, j), v in same.items():
                    objective.append(-int(cg * round(W[i, j])) * v)
                for (i, j), v in samen.items():
                    objective.append(-int(cn * round(W[i, j])) * v)
                continue
            # Top-k > 2: a type reaches GPU g (u) if any of its items sits there, node n (v) if it reaches
            # a GPU of n; it reaches at least K - (its co-located pairs) GPUs (a valid cut).
            self.const -= (cg + cn) * float(cnt.sum()) * K
            for xi in range(X):
                items = [int(i) for i in t.items_XK[xi]]
                u = [m.NewBoolVar(f"u_{l}_{xi}_{g}") for g in range(G)]
                for g in range(G):
                    for i in items:
                        m.AddImplication(self.x[l][i][g], u[g])
                pairs = [same[a, b] for k, a in enumerate(items) for b in items[k + 1:] if (a, b) in same]
                m.Add(sum(u) >= K - sum(pairs))
                m.Add(sum(u) >= math.ceil(K / s))
                self.u[l, xi] = u
                objective.append(int(cg * cnt[xi]) * sum(u))
                if N > 1:
                    v = [m.NewBoolVar(f"v_{l}_{xi}_{n}") for n in range(N)]
                    for g in range(G):
                        m.AddImplication(u[g], v[g // gpn])
                    pn = [samen[a, b] for k, a in enumerate(items) for b in items[k + 1:] if (a, b) in samen]
                    m.Add(sum(v) >= K - sum(pn))
                    self.v[l, xi] = v
                    objective.append(int(cn * cnt[xi]) * sum(v))
                else:
                    self.const += cn * float(cnt[xi])

    def _hint(self, gpu_LP: np.ndarray) -> None:
        inst, m = self.inst, self.model
        node = inst.node_of_gpu
        for l in self.layers:
            for i in range(inst.P):
                for g in range(inst.G):
                    m.AddHint(self.x[l][i][g], int(gpu_LP[l, i] == g))
            m.AddHint(self.maxload[l], int(np.bincount(gpu_LP[l], weights=self.load[l], minlength=inst.G).max()))
        for (l, xi), u in getattr(self, "u", {}).items():
            on = set(gpu_LP[l, inst.types_L[l].items_XK[xi]].tolist())
            for g in range(inst.G):
                m.AddHint(u[g], int(g in on))
            if (l, xi) in self.v:
                nodes = {int(node[g]) for g in on}
                for n, v in enumerate(self.v[l, xi]):
                    m.AddHint(v, int(n in nodes))
        for (l, i, j), y in getattr(self, "y", {}).items():
            for g in range(inst.G):
                m.AddHint(y[g], int(gpu_LP[l, i] == g and gpu_LP[l, j] == g))
            if (l, i, j) in self.yn:
                for n, yn in enumerate(self.yn[l, i, j]):
                    m.AddHint(yn, int(node[gpu_LP[l, i]] == n and node[gpu_LP[l, j]] == n))
        for (l, i, j), z in getattr(self, "z", {}).items():
            for g in range(inst.G):
                m.AddHint(z[g], int(gpu_LP[l, i] == g and gpu_LP[l + 1, j] == g))
            if (l, i, j) in self.zn:
                for n, zn in enumerate(self.zn[l, i, j]):
                    m.AddHint(zn, int(node[gpu_LP[l, i]] == n and node[gpu_LP[l + 1, j]] == n))

    def solve(self, det_time: float, seed: int, num_workers: int) -> dict[str, Any]:
        """Solve within ``det_time`` deterministic seconds (wall-clock safety: det_time / DET_PER_SECOND x
        WALL_SAFETY); returns status name, assignment of the model's layers (or None), value and bound (in
        objective units, constant included), and how it stopped."""
        solver = cp_model.CpSolver()
        p = solver.parameters
        p.num_workers = num_workers
        p.random_seed = seed
        if num_workers > 1:
            p.interleave_search = True
        p.max_deterministic_time = max(det_time, 0.005)
        p.max_time_in_seconds = max(det_time, 0.005) / DET_PER_SECOND * WALL_SAFETY
        t0 = time.perf_counter()
        status = solver.Solve(self.model)
        wall = time.perf_counter() - t0
        name = solver.StatusName(status)
        res: dict[str, Any] = {"status": name, "gpu": None, "wall_s": wall,
                               "deterministic_time": solver.deterministic_time}
        res["stopped_by_wall_clock"] = bool(wall >= p.max_time_in_seconds * 0.98
                                            and solver.deterministic_time < p.max_deterministic_time)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            gpu = {}
            for l in self.layers:
                gpu[l] = np.array([next(g for g in range(self.inst.G) if solver.BooleanValue(self.x[l][i][g]))
                                   for i in range(self.inst.P)])
            if self.rounded:  # keep the hint of a layer whose rounded loads hid a GPU above the true cap
                gpu = {l: row for l, row in gpu.items()
                       if layer_loads(self.inst, l, row).max() <= self.inst.cap_L[l] * (1 + 1e-9)}
            res["gpu"] = gpu
            res["value"] = (solver.ObjectiveValue() + self.const) / self.S
            res["bound"] = None if self.rounded else (solver.BestObjectiveBound() + self.const) / self.S
            res["proven"] = status == cp_model.OPTIMAL and not self.rounded
        elif status == cp_model.UNKNOWN:
            # No solution within the budget: CP-SAT's bound is not meaningful then; the hint stays.
            res["bound"] = None
            res["proven"] = False
        else:
            raise MoeplaceError(f"cpsat: CP-SAT ended with status {name}")
        return res


def run_cpsat(inst: Instance, hint_LP: np.ndarray, options: SolveOptions, time_s: float,
              layers: list[int] | None = None) -> Outcome:
    """CP-SAT on the instance (ep: layer by layer), warm-started from ``hint_LP``, for ``time_s`` nominal
    seconds (deterministic time ``time_s x DET_PER_SECOND``, split evenly among the blocks, what a block
    leaves passing to the next). The hint is kept where CP-SAT finds nothing within its budget."""
    layers = list(range(inst.L)) if layers is None else layers
    size = model_size(inst, layers)
    if size > MAX_LITERALS:
        raise ValueError(f"cpsat: the model would have {size} boolean variables (layers {inst.L} x items "
                         f"{inst.P} x GPUs {inst.G} plus traffic indicators), more than {MAX_LITERALS}; "
                         f"use --solver auto, which decomposes large instances")
    hint = canonical(inst, hint_LP, per_layer=inst.mode is TrafficMode.EP) if not inst.redundant else hint_LP.copy()
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
        res = CpsatModel(inst, block, hint).solve(share, options.seed + block[0], workers(options))
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
        params=("balance_weight", "intra_weight", "inter_weight", "max_imbalance"), token_paths=True)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    inst = build_instance(problem, options)
    name, hint, _ = best_start(inst, problem)
    out = run_cpsat(inst, hint, options, options.time_limit_s)
    out.extra["warm_start"] = name
    return finish(inst, out, "cpsat", start)
