"""The placement problem as the optimising solvers see it: **items**, their exact statistics, the objective's
weights and the balance cap.

Items. With redundant slots (P = E + R) the hottest experts get extra copies first, by EPLB's rule (the
expert with the largest load per copy gets the next one; ``solvers.layout.replicate_hottest``), at most one per
GPU (``copies_cap``). Copy r of
expert e is the *item* ``base_LE[l, e] + r``; items are numbered expert-major, so without redundancy item =
expert. The project's replica rule (``Placement.slots_for_tokens``: token t uses copy ``t mod cnt(e)``, the
copies in increasing slot order) then fixes which tokens each item serves, **provided the copies of an
expert sit on GPUs in non-decreasing order of r**; every solver keeps that order, and with it every count
below is exact for the trace the problem was built from:

- ``load_LP``: (token, expert) pairs each item serves (what ``evaluate`` counts as GPU load);
- ``ep``: the token *types* of each layer (the distinct sets of items a token uses, with how many tokens
  use them); the number of distinct GPUs (and nodes) of a token-layer is a function of its type;
- ``coherent``: ``trans_LPP[l, i, j]``: (token, rank, rank') with item i at layer l and item j at l+1 (all
  K x K pairs): the expert-pair hops of a placement are the entries whose items sit on different GPUs.

Without token paths (a statistics file) the item counts are the expert counts split evenly among copies
and, for top-k > 2 in ``ep`` mode, the distinct-GPU count is replaced by its pairwise lower bound
(K - co-located pairs); ``exact`` is then False and the objective is an estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placer.core.mode import TrafficMode
from placer.core.objective import TRAFFIC_QUANTITIES, WEIGHT_DECIMALS, Objective, Quantity, Weights
from solvers.layout import copies_cap, pack_balanced, replicate_hottest
from solvers.problem import PlacementProblem, SolveOptions

DEFAULT_MAX_IMBALANCE = 1.05


def weights_of(params: dict[str, Any], problem: PlacementProblem) -> Weights:
    """The objective's weights: those in ``params`` (``intra_weight``, ``inter_weight``, ``balance_weight``), the
    others from the problem's topology (``Weights.for_topology``)."""
    return Weights.for_topology(problem.topology, problem.mode, intra_weight=params.get("intra_weight"),
                                inter_weight=params.get("inter_weight"), balance_weight=params.get("balance_weight"))


def max_imbalance_of(params: dict[str, Any]) -> float | None:
    """The cap on each layer's largest GPU load as a multiple of the layer's mean (``max_imbalance``, default
    1.05; 0 or None: no cap), raised where the starting LPT packing does not reach it, so it is always
    feasible; an explicit cap below what any placement can reach is refused as infeasible (``build_instance``)."""
    cap = params.get("max_imbalance", DEFAULT_MAX_IMBALANCE)
    if cap is None:
        return None
    if isinstance(cap, bool) or not isinstance(cap, (int, float, np.integer, np.floating)) or not math.isfinite(cap):
        raise ValueError(f"max_imbalance must be a finite number, got {cap!r}")
    if cap == 0:
        return None
    if cap < 1:
        raise ValueError(f"max_imbalance ({cap}) must be >= 1 (a multiple of the mean load), or 0 for no cap")
    return float(cap)


@dataclass
class LayerTypes:
    """One layer's token types: ``items_XK`` (sorted item ids) used by ``count_X`` tokens."""

    items_XK: np.ndarray
    count_X: np.ndarray


@dataclass
class Instance:
    """Everything a solver needs, in items (see the module docstring)."""

    problem: PlacementProblem
    objective: Objective        # the project objective the solvers minimise (weights from ``weights_of``)
    weights: Weights
    max_imbalance: float | None
    mode: TrafficMode
    cnt_LE: np.ndarray          # [L, E] copies of each expert
    base_LE: np.ndarray         # [L, E] first item of each expert
    item_expert_LP: np.ndarray  # [L, P] expert of each item
    load_LP: np.ndarray         # [L, P] tokens served by each item (float64; whole from token paths or without copies)
    exact: bool                 # the objective is exactly what evaluate measures on the solve trace
    from_paths: bool            # the counts come from token paths (the cost model can check them)
    traffic: bool               # affinity is known (False for load-only statistics: balance only)
    types_L: list[LayerTypes] | None = None  # ep
    offset_L: np.ndarray | None = None       # ep: constant added to each layer's distinct-GPU sum (surrogate)
    trans_LPP: np.ndarray | None = None      # coherent
    cap_L: np.ndarray | None = None          # [L] largest GPU load allowed (inf: no cap)
    start_gpu_LP: np.ndarray | None = None   # [L, P] the LPT packing the cap refers to
    extra: dict[str, Any] = field(default_factory=dict)

    # -- shape -------------------------------------------------------------------------------------
    @property
    def L(self) -> int:
        return self.problem.num_layers

    @property
    def E(self) -> int:
        return self.problem.num_experts

    @property
    def P(self) -> int:
        return self.problem.num_slots

    @property
    def G(self) -> int:
        return self.problem.topology.num_gpus

    @property
    def N(self) -> int:
        return self.problem.topology.num_nodes

    @property
    def K(self) -> int:
        return self.problem.top_k

    @property
    def s(self) -> int:
        """Slots per GPU."""
        return self.P // self.G

    @property
    def node_of_gpu(self) -> np.ndarray:
        return self.problem.topology.node_of_gpu()

    @property
    def redundant(self) -> bool:
        return self.P > self.E

    @property
    def copy_step(self) -> int:
        """How far up copy r + 1 of an expert sits from copy r, at least: 1 (copies on different GPUs, since a
        second copy on a GPU only splits that GPU's tokens: a wasted slot), or 0 where an expert has more copies
        than there are GPUs."""
        return int((self.cnt_LE <= self.G).all())

    # -- objective coefficients ----------------------------------------------------------------------
    @property
    def decomposes(self) -> bool:
        """The objective is a sum of independent per-layer terms (``ep`` traffic, or balance alone)."""
        return self.mode.decomposes_by_layer or not self.traffic

    @property
    def c_gpu(self) -> float:
        """Weight of one distinct GPU of a token-layer (ep) or one cross-GPU pair hop (coherent)."""
        return self.objective.weight(TRAFFIC_QUANTITIES[self.mode][0])

    @property
    def c_node(self) -> float:
        """Weight of one distinct node of a token-layer (ep) or one cross-node pair hop (coherent)."""
        return self.objective.weight(TRAFFIC_QUANTITIES[self.mode][1])

    @property
    def c_bal(self) -> float:
        return self.objective.weight(Quantity.MAX_LOAD)

    def value(self, gpus: float, nodes: float, maxload: float) -> float:
        """The objective of the traffic counts (distinct GPUs and nodes, or pair hops) and the largest loads,
        summed over layers (the terms in the objective's order, as ``Objective.measure`` adds them)."""
        return self.c_gpu * gpus + self.c_node * nodes + self.c_bal * maxload

    def scale(self) -> int:
        """An integer that makes every coefficient times an integer count an integer (for CP-SAT)."""
        model = self.mode.model  # ep weighs the remote share (n-1)/n of the GPUs and nodes
        return 10 ** WEIGHT_DECIMALS * model.remote_denominator(self.G) * model.remote_denominator(self.N)

    # -- items -------------------------------------------------------------------------------------
    def prev_next_LP(self) -> tuple[np.ndarray, np.ndarray]:
        """[L, P] the previous / next copy of the same expert (-1 if none): copy r + 1 must sit on a GPU at least
        ``copy_step`` above copy r's."""
        prev = np.full((self.L, self.P), -1, dtype=np.int64)
        nxt = np.full((self.L, self.P), -1, dtype=np.int64)
        for l in range(self.L):
            same = self.item_expert_LP[l, 1:] == self.item_expert_LP[l, :-1]
            idx = np.nonzero(same)[0]
            prev[l, idx + 1] = idx
            nxt[l, idx] = idx + 1
        return prev, nxt

    def order_ok(self, gpu_LP: np.ndarray) -> bool:
        """True if every expert's copies sit on increasing GPUs in copy order (non-decreasing where
        ``copy_step`` is 0)."""
        same = self.item_expert_LP[:, 1:] == self.item_expert_LP[:, :-1]
        return bool((gpu_LP[:, 1:][same] >= gpu_LP[:, :-1][same] + self.copy_step).all())

    def capacity_ok(self, gpu_LP: np.ndarray) -> bool:
        counts = np.stack([np.bincount(g, minlength=self.G) for g in gpu_LP])
        return bool((counts == self.s).all())

    def pair_weights(self, l: int) -> np.ndarray:
        """ep: [P, P] tokens of layer l using both items i and j (i != j), from its types (symmetric)."""
        t = self.types_L[l]
        P = self.P
        X, K = t.items_XK.shape
        W = np.zeros(P * P)
        if X and K > 1:
            a, b = np.triu_indices(K, k=1)
            flat = (t.items_XK[:, a].astype(np.int64) * P + t.items_XK[:, b]).ravel()
            W = np.bincount(flat, weights=np.repeat(t.count_X, len(a)), minlength=P * P)
        W = W.reshape(P, P)
        return W + W.T


def _items(cnt_LE: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    L, E = cnt_LE.shape
    base = np.zeros((L, E), dtype=np.int64)
    base[:, 1:] = np.cumsum(cnt_LE, axis=1)[:, :-1]
    expert = np.stack([np.repeat(np.arange(E), cnt_LE[l]) for l in range(L)])
    return base, expert


def token_items(paths_TK: np.ndarray, layer: int, cnt_LE: np.ndarray, base_LE: np.ndarray,
                token_index_T: np.ndarray) -> np.ndarray:
    """[T, K] item used by each (token, rank) at ``layer``: copy ``t mod cnt(e)`` of expert e."""
    e = paths_TK.astype(np.int64)
    return base_LE[layer][e] + token_index_T[:, None] % cnt_LE[layer][e]


def layer_types(items_TK: np.ndarray) -> LayerTypes:
    """The distinct item sets of a layer's tokens and how many tokens use each."""
    if items_TK.shape[0] == 0:
        return LayerTypes(np.zeros((0, items_TK.shape[1]), np.int32), np.zeros(0))
    srt = np.sort(items_TK, axis=1).astype(np.int64)
    T, K = srt.shape
    # Pack each row into as few int64 keys as its bits need, sort rows by the keys, count the runs.
    bits = max(int(srt.max()).bit_length(), 1)
    per_key = max(62 // bits, 1)
    keys = []
    for start in range(0, K, per_key):
        key = np.zeros(T, dtype=np.int64)
        for k in range(start, min(start + per_key, K)):
            key = (key << bits) | srt[:, k]
        keys.append(key)
    order = np.lexsort(keys[::-1])
    new = np.ones(T, dtype=bool)
    new[1:] = np.any(np.stack([k[order][1:] != k[order][:-1] for k in keys]), axis=0)
    starts = np.nonzero(new)[0]
    counts = np.diff(np.append(starts, T))
    uniq = srt[order[starts]].astype(np.int32)
    return LayerTypes(np.ascontiguousarray(uniq), counts.astype(np.float64))


def _check_paths(problem: PlacementProblem) -> np.ndarray | None:
    paths = problem.paths_TLK
    if paths is None:
        return None
    paths = np.asarray(paths)
    L, E, K = problem.num_layers, problem.num_experts, problem.top_k
    if paths.ndim != 3 or paths.shape[1] != L:
        raise ValueError(f"token paths have shape {paths.shape}, expected [tokens, {L}, top_k]")
    if paths.shape[2] != K:
        raise ValueError(f"token paths have top-k {paths.shape[2]}, the problem says {K}")
    if paths.size and int(paths.max()) >= E:
        raise ValueError(f"token paths route to expert {int(paths.max())}, the problem has {E} experts")
    if problem.present_TL is not None and np.shape(problem.present_TL) != paths.shape[:2]:
        raise ValueError(f"present mask has shape {np.shape(problem.present_TL)}, the paths "
                         f"{list(paths.shape[:2])}")
    return paths


def lpt_start(load_LP: np.ndarray, item_expert_LP: np.ndarray, G: int) -> np.ndarray:
    """[L, P] an LPT packing of items (largest first to the lightest GPU with room, copies of one expert
    apart where possible), with each expert's copies then put in GPU order."""
    L, P = load_LP.shape
    out = np.empty((L, P), dtype=np.int64)
    for l in range(L):
        gpu, _ = pack_balanced(load_LP[l], G, P // G, label_N=item_expert_LP[l])
        out[l] = sort_copies(gpu, item_expert_LP[l])
    return out


def sort_copies(gpu_P: np.ndarray, item_expert_P: np.ndarray) -> np.ndarray:
    """The same multiset of GPUs per expert, given to its copies in increasing order."""
    gpu = gpu_P.copy()
    bounds = np.nonzero(np.diff(item_expert_P))[0] + 1
    for seg in np.split(np.arange(len(gpu)), bounds):
        if len(seg) > 1:
            gpu[seg] = np.sort(gpu[seg])
    return gpu


def build_instance(problem: PlacementProblem, options: SolveOptions, copies_LE: np.ndarray | None = None) -> Instance:
    """The items, their exact counts (from token paths when the problem has them), objective and cap.
    ``copies_LE``: [L, E] copies of every expert (default: EPLB's rule on the problem's load), for judging a
    placement whose copies were chosen otherwise (``gpu_from_placement`` needs the same counts)."""
    mode = problem.mode
    weights = weights_of(options.params, problem)
    max_imbalance = max_imbalance_of(options.params)
    L, E, P, K = problem.num_layers, problem.num_experts, problem.num_slots, problem.top_k
    G, N = problem.topology.num_gpus, problem.topology.num_nodes

    # Step 1: copies of the hottest experts (EPLB's rule, unless given), then items expert-major.
    if copies_LE is None:
        cnt = np.stack([replicate_hottest(problem.load_LE[l], P, copies_cap(E, P, G))[1] for l in range(L)])
    else:
        cnt = np.asarray(copies_LE, dtype=np.int64)
        if cnt.shape != (L, E) or (cnt < 1).any() or (cnt.sum(axis=1) != P).any():
            raise ValueError(f"copies must be [{L}, {E}] counts of at least 1 summing to {P} slots per layer")
    base, item_expert = _items(cnt)
    paths = _check_paths(problem)
    from_paths = paths is not None
    traffic = from_paths or (problem.coact_LEE is not None and problem.trans_LEE is not None)
    # Statistics are exact without copies, except ep with top-k > 2 (distinct GPUs need whole token sets). Load-only
    # statistics are exact with copies too: their objective is the even split of each expert's load among its
    # copies, which is what they are judged by (``evaluate --load``), so the balance bound and gap hold for them.
    counts = _TRAFFIC_COUNTS[mode]
    exact = from_paths or not traffic or (P == E and counts.exact_from_statistics(K))
    objective = Objective.weighted(mode, weights, G, N, traffic)
    inst = Instance(problem, objective, weights, max_imbalance, mode, cnt, base, item_expert, np.zeros((L, P)),
                    exact=exact, from_paths=from_paths, traffic=traffic)

    # Step 2: item loads and the affinity counts of the mode, exact from the token paths when given.
    if from_paths:
        T = paths.shape[0]
        present = None if problem.present_TL is None else np.asarray(problem.present_TL, dtype=bool)
        layers = counts(inst, every_row=present is None)
        for l in range(L):
            rows = np.arange(T) if present is None else np.nonzero(present[:, l])[0]
            items = token_items(paths[rows, l, :], l, cnt, base, rows)
            inst.load_LP[l] = np.bincount(items.ravel(), minlength=P)
            layers.add(l, items, rows)
        layers.finish()
    else:
        inst.load_LP = problem.load_LE[np.arange(L)[:, None], item_expert] / cnt[np.arange(L)[:, None], item_expert]
        if inst.traffic:
            split = 1.0 / cnt[np.arange(L)[:, None], item_expert]  # [L, P]
            counts.from_statistics(problem, inst, split)
    # Step 3: the balance cap, never below the LPT packing's largest load (so it is always feasible).
    inst.start_gpu_LP = lpt_start(inst.load_LP, item_expert, G)
    start_max = np.array([np.bincount(inst.start_gpu_LP[l], weights=inst.load_LP[l], minlength=G).max()
                          for l in range(L)])
    if max_imbalance is None:
        inst.cap_L = np.full(L, np.inf)
    else:
        asked = max_imbalance * inst.load_LP.sum(axis=1) / G
        # A cap below what any placement reaches is an infeasible request (the heaviest item with the s - 1
        # lightest others is on some GPU).
        srt = np.sort(inst.load_LP, axis=1)
        least = srt[:, -1] + srt[:, : P // G - 1].sum(axis=1)
        bad = np.nonzero(asked < least - 1e-9)[0]
        if bad.size and "max_imbalance" in options.params:  # the default adapts; an explicit cap is a request
            l = int(bad[0])
            raise ValueError(f"max_imbalance {max_imbalance} caps layer {l}'s largest GPU load at "
                             f"{asked[l]:.1f} tokens ({max_imbalance} x mean {asked[l] / max_imbalance:.1f}), "
                             f"but no placement goes below {least[l]:.1f} (its heaviest expert copy with the "
                             f"{P // G - 1} lightest others); raise --max-imbalance or add --redundant copies")
        inst.cap_L = np.maximum(asked, start_max)
        raised = np.nonzero(start_max > asked + 1e-9)[0]
        if raised.size:
            inst.extra["cap_raised_to_lpt_layers"] = raised.tolist()
    return inst


class _EpCounts:
    """ep: each layer's token types (``Instance.types_L``, ``offset_L``), from the token paths layer by layer
    (``add`` then ``finish``) or from the co-activation counts (``from_statistics``)."""

    @staticmethod
    def exact_from_statistics(top_k: int) -> bool:
        """Co-activation pairs give a token-layer's distinct GPUs exactly for top-k <= 2 only."""
        return top_k <= 2

    def __init__(self, inst: Instance, every_row: bool) -> None:
        self.inst, self.types = inst, []

    def add(self, l: int, items: np.ndarray, rows: np.ndarray) -> None:
        self.types.append(layer_types(items))

    def finish(self) -> None:
        self.inst.types_L = self.types
        self.inst.offset_L = np.zeros(self.inst.L)

    @staticmethod
    def from_statistics(problem: PlacementProblem, inst: Instance, split_LP: np.ndarray) -> None:
        inst.types_L, inst.offset_L = _pair_types(problem, inst, split_LP)
        if inst.K > 2:
            inst.extra["surrogate"] = "pairwise (K - co-located pairs), a lower bound on distinct GPUs"


class _CoherentCounts:
    """coherent: the item transitions of adjacent layers (``Instance.trans_LPP``), from the token paths layer by
    layer (``add`` then ``finish``; ``every_row``: every token is present at every layer) or from the transition
    counts (``from_statistics``)."""

    @staticmethod
    def exact_from_statistics(top_k: int) -> bool:
        """Transition counts are all the coherent objective needs."""
        return True

    def __init__(self, inst: Instance, every_row: bool) -> None:
        self.inst, self.every_row = inst, every_row
        self.trans = np.zeros((max(inst.L - 1, 0), inst.P, inst.P))
        self.prev_items = self.prev_rows = None

    def add(self, l: int, items: np.ndarray, rows: np.ndarray) -> None:
        if l > 0:
            if self.every_row:
                a, b = self.prev_items, items
            else:  # the tokens present at both layers
                keep_prev = np.isin(self.prev_rows, rows, assume_unique=True)
                keep_cur = np.isin(rows, self.prev_rows, assume_unique=True)
                a, b = self.prev_items[keep_prev], items[keep_cur]
            P = self.inst.P
            flat = (a[:, :, None] * P + b[:, None, :]).ravel()
            self.trans[l - 1] = np.bincount(flat, minlength=P * P).reshape(P, P)
        self.prev_items, self.prev_rows = items, rows

    def finish(self) -> None:
        self.inst.trans_LPP = self.trans

    @staticmethod
    def from_statistics(problem: PlacementProblem, inst: Instance, split_LP: np.ndarray) -> None:
        L, P, item_expert = inst.L, inst.P, inst.item_expert_LP
        tr = np.asarray(problem.trans_LEE, dtype=np.float64)
        inst.trans_LPP = np.stack([
            tr[l][np.ix_(item_expert[l], item_expert[l + 1])] * split_LP[l][:, None] * split_LP[l + 1][None, :]
            for l in range(L - 1)]) if L > 1 else np.zeros((0, P, P))


# How each traffic model's counts of an instance are built.
_TRAFFIC_COUNTS: dict[TrafficMode, type[_EpCounts] | type[_CoherentCounts]] = {
    TrafficMode.EP: _EpCounts,
    TrafficMode.COHERENT: _CoherentCounts,
}


def _pair_types(problem: PlacementProblem, inst: Instance, split_LP: np.ndarray) -> tuple[list[LayerTypes], np.ndarray]:
    """ep types from co-activation counts: item pairs weighted by tokens, plus a constant per layer so that
    offset + sum(count x distinct GPUs of the pair) = K x tokens - co-located pairs (exact for K = 2)."""
    L, P = inst.load_LP.shape
    types, offset = [], np.zeros(L)
    iu, ju = np.triu_indices(P, k=1)
    for l in range(L):
        ex = inst.item_expert_LP[l]
        c = np.asarray(problem.coact_LEE[l], dtype=np.float64)[np.ix_(ex, ex)] * split_LP[l][:, None] * split_LP[l][None, :]
        w = c[iu, ju]
        w[ex[iu] == ex[ju]] = 0.0  # copies of one expert are never chosen by one token
        keep = w > 0
        types.append(LayerTypes(np.stack([iu[keep], ju[keep]], axis=1).astype(np.int32), w[keep]))
        offset[l] = float(problem.load_LE[l].sum()) - 2.0 * float(w.sum())
    return types, offset
