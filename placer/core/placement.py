"""The ``Placement``: which logical expert each physical slot of each layer holds, and how it was solved.

Slots are GPU-major: slot p of a layer sits on GPU ``p // (P / G)``; this is the layout SGLang, vLLM and
DeepSeek's EPLB use, so every export is a reshaping. With redundant copies (P > E) a logical expert has
several slots; its tokens are split **evenly** among its replicas (as SGLang and vLLM dispatch), which is
what load balance is computed with (``gpu_load_LG``).

A ``Placement`` is the layout (``phy2log_LP``, the maps derived from it, the layer numbering and the topology it
was made for); how it was solved travels beside it as a ``SolveReport`` (``placement.report``), which equality
ignores: two placements are equal when they put the same experts in the same slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from placer.core.enums import NameEnum
from placer.core.mode import TrafficMode
from placer.core.objective import Objective
from placer.core.topology import Topology


def same_gpu_copies(rows_XP: np.ndarray, num_gpus: int) -> np.ndarray:
    """[X, G] slots of each GPU holding an expert that another slot of the same GPU holds too (per row of slots
    laid out GPU-major): the copies beyond the first of an expert on one GPU."""
    rows = np.asarray(rows_XP)
    X, P = rows.shape
    per_gpu = np.sort(rows.reshape(X, num_gpus, P // num_gpus), axis=2)
    return (per_gpu[:, :, 1:] == per_gpu[:, :, :-1]).sum(axis=2)


class SolveStatus(NameEnum):
    """OPTIMAL: proved optimal for its objective; FEASIBLE: a solver's best, with bound and gap; HEURISTIC: a
    baseline with no bound."""

    OPTIMAL = "OPTIMAL"
    FEASIBLE = "FEASIBLE"
    HEURISTIC = "HEURISTIC"


@dataclass(frozen=True)
class SolveReport:
    """How a placement was obtained.

    solver: the solver's name ("manual" for a placement made by hand).
    mode: the traffic model it was solved for.
    objective / objective_value: what the solver optimised and the value it reached (None for baselines that
        optimise nothing); bound: a proven lower bound on it; gap: (objective - bound) / objective.
    wall_time_s: the solve's wall time. source: the input it was fitted to. extra: solver-specific details.
    """

    solver: str = "manual"
    status: SolveStatus = SolveStatus.HEURISTIC
    mode: TrafficMode = TrafficMode.EP
    objective: Objective | None = None
    objective_value: float | None = None
    bound: float | None = None
    gap: float | None = None
    wall_time_s: float = 0.0
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "status", SolveStatus(self.status))
        except ValueError:
            raise ValueError(f"status {self.status!r} is not one of "
                             f"{', '.join(s.value for s in SolveStatus)}") from None
        object.__setattr__(self, "mode", TrafficMode.parse(self.mode))

    def with_(self, **changes: Any) -> "SolveReport":
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class Placement:
    """A placement of every layer's experts on GPUs.

    phy2log_LP: [L, P] logical expert held by each physical slot, slots GPU-major.
    model_layer_indices: the model's decoder-layer index of each MoE layer (from the trace).
    topology: the machines it was made for (their GPUs and nodes are ``num_gpus`` and ``num_nodes``).
    report: how it was solved.

    Equality is the layout's (``__eq__``).
    """

    phy2log_LP: np.ndarray
    num_gpus: int
    num_experts: int
    num_nodes: int = 1
    model_layer_indices: tuple[int, ...] | None = None
    topology: Topology | None = None
    report: SolveReport = field(default_factory=SolveReport)

    def __post_init__(self) -> None:
        try:
            arr = np.array(self.phy2log_LP, dtype=np.int64, copy=True)
        except OverflowError:  # an id beyond int64 (a hand-edited file): outside [0, E) like any other
            raise ValueError(f"phy2log holds an expert id beyond 64-bit integers, outside [0, {self.num_experts})") from None
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"phy2log must be a non-empty [layers, slots] matrix, got shape {arr.shape}")
        arr.setflags(write=False)
        object.__setattr__(self, "phy2log_LP", arr)
        L, P = arr.shape
        G, E, N = self.num_gpus, self.num_experts, self.num_nodes
        if G < 1 or E < 1 or N < 1:
            raise ValueError(f"num_gpus ({G}), num_experts ({E}) and num_nodes ({N}) must be positive")
        if G % N:
            raise ValueError(f"gpus ({G}) must divide evenly into nodes ({N})")
        if P < E:
            raise ValueError(f"slots per layer ({P}) fewer than experts ({E}): every expert needs a slot")
        if P % G:
            raise ValueError(f"experts ({E}) + redundant ({P - E}) = {P} slots must divide by gpus ({G})")
        if arr.min() < 0 or arr.max() >= E:
            l, p = (int(v[0]) for v in np.nonzero((arr < 0) | (arr >= E)))
            raise ValueError(f"layer {l}, slot {p} holds expert {int(arr[l, p])}, outside [0, {E})")
        counts = self.logcnt_LE
        if (counts == 0).any():
            l, e = (int(v[0]) for v in np.nonzero(counts == 0))
            raise ValueError(f"layer {l}: expert {e} has no slot")
        if self.model_layer_indices is not None:
            idx = tuple(int(i) for i in self.model_layer_indices)
            if len(idx) != L:
                raise ValueError(f"model_layer_indices has {len(idx)} entries, the placement {L} layers")
            object.__setattr__(self, "model_layer_indices", idx)
        if self.topology is not None and (self.topology.num_gpus, self.topology.num_nodes) != (G, N):
            raise ValueError(f"topology has {self.topology.num_gpus} GPUs in {self.topology.num_nodes} nodes, "
                             f"the placement {G} GPUs in {N} nodes")

    @classmethod
    def from_assignment(cls, gpu_LX: Any, expert_LX: Any, num_gpus: int, num_experts: int, num_nodes: int = 1,
                        order_LX: Any = None, **fields: Any) -> "Placement":
        """The placement that puts item x of layer l (a copy of expert ``expert_LX[l, x]``) on GPU ``gpu_LX[l, x]``;
        the slots of a GPU hold its items in increasing ``order_LX[l, x]`` (default: item order, so that an
        expert's copies keep their order). ``fields``: the other fields of ``Placement``.

        Every GPU must receive the same number of items, P / G (ValueError naming the layer and GPU otherwise).
        """
        gpu = np.asarray(gpu_LX, dtype=np.int64)
        expert = np.asarray(expert_LX, dtype=np.int64)
        if gpu.ndim != 2 or gpu.shape != expert.shape:
            raise ValueError(f"GPU assignment {gpu.shape} and experts {expert.shape} must be [layers, items] alike")
        L, X = gpu.shape
        order = np.broadcast_to(np.arange(X), (L, X)) if order_LX is None else np.asarray(order_LX)
        if gpu.size and (gpu.min() < 0 or gpu.max() >= num_gpus):
            raise ValueError(f"GPU assignment names GPU {int(gpu.min() if gpu.min() < 0 else gpu.max())}, "
                             f"outside [0, {num_gpus})")
        rows = np.empty((L, X), dtype=np.int64)
        for l in range(L):
            counts = np.bincount(gpu[l], minlength=num_gpus)
            if X % num_gpus or (counts != X // num_gpus).any():
                g = int(np.argmax(counts != X // num_gpus)) if not X % num_gpus else 0
                raise ValueError(f"layer {l}: GPU {g} receives {int(counts[g])} items, every GPU needs "
                                 f"{X / num_gpus:g} ({X} items on {num_gpus} GPUs)")
            rows[l] = expert[l][np.lexsort((order[l], gpu[l]))]
        return cls(rows, num_gpus, num_experts, num_nodes, **fields)

    # -- shape -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(self.phy2log_LP.shape[0])

    @property
    def num_slots(self) -> int:
        """P: physical slots per layer."""
        return int(self.phy2log_LP.shape[1])

    @property
    def num_redundant(self) -> int:
        return self.num_slots - self.num_experts

    @property
    def slots_per_gpu(self) -> int:
        return self.num_slots // self.num_gpus

    def gpu_of_slot(self) -> np.ndarray:
        """[P] GPU of each slot (GPU-major)."""
        return np.arange(self.num_slots) // self.slots_per_gpu

    # -- derived maps ------------------------------------------------------------------------------
    @property
    def logcnt_LE(self) -> np.ndarray:
        """[L, E] number of replicas of each logical expert."""
        L, E = self.num_layers, self.num_experts
        out = np.zeros((L, E), dtype=np.int64)
        np.add.at(out, (np.repeat(np.arange(L), self.num_slots), self.phy2log_LP.ravel()), 1)
        return out

    def log2phy_LER(self) -> np.ndarray:
        """[L, E, R] physical slots of each logical expert in increasing order, padded with -1
        (R = the largest replica count)."""
        cnt = self.logcnt_LE
        L, E, R = self.num_layers, self.num_experts, int(cnt.max())
        out = np.full((L, E, R), -1, dtype=np.int64)
        for l in range(L):
            order = np.argsort(self.phy2log_LP[l], kind="stable")
            experts = self.phy2log_LP[l][order]
            starts = np.searchsorted(experts, np.arange(E))
            rank = np.arange(self.num_slots) - starts[experts]
            out[l, experts, rank] = order
        return out

    def expert_gpu_share_LEG(self) -> np.ndarray:
        """[L, E, G] share of expert e's tokens served on GPU g (replicas split evenly)."""
        L, E, G = self.num_layers, self.num_experts, self.num_gpus
        out = np.zeros((L, E, G))
        gpu = self.gpu_of_slot()
        for l in range(L):
            np.add.at(out[l], (self.phy2log_LP[l], gpu), 1.0)
        return out / self.logcnt_LE[:, :, None]

    def gpu_load_LG(self, load_LE: np.ndarray) -> np.ndarray:
        """[L, G] tokens computed per GPU for an expert load ``load_LE`` (even split among replicas)."""
        load_LE = np.asarray(load_LE, dtype=np.float64)
        if load_LE.shape != (self.num_layers, self.num_experts):
            raise ValueError(f"load has shape {load_LE.shape}, the placement needs "
                             f"[{self.num_layers}, {self.num_experts}]")
        return np.einsum("le,leg->lg", load_LE, self.expert_gpu_share_LEG())

    def slots_for_tokens(self, layer: int, experts_TK: np.ndarray, token_index_T: np.ndarray) -> np.ndarray:
        """[T, K] physical slot serving each (token, expert) at ``layer``.

        The replica rule (vLLM's): token t uses replica ``t mod cnt(e)`` of expert e, where t is the token's
        index in the trace (0-based, counted over the whole trace) and replicas are the expert's slots in
        increasing order. Over many tokens this splits an expert's load evenly among its replicas; evaluate,
        the cost model and replay all dispatch with this rule.
        """
        experts_TK = np.asarray(experts_TK, dtype=np.int64)
        t = np.asarray(token_index_T, dtype=np.int64)[:, None]
        cnt = self.logcnt_LE[layer][experts_TK]
        return self._log2phy_cache()[layer][experts_TK, t % cnt]

    def _log2phy_cache(self) -> np.ndarray:
        cache = self.__dict__.get("_l2p")
        if cache is None:
            cache = self.log2phy_LER()
            object.__setattr__(self, "_l2p", cache)
        return cache

    @property
    def same_gpu_copies_LG(self) -> np.ndarray:
        """[L, G] slots that hold a second (third, ...) copy of an expert their GPU already holds: wasted slots,
        since the copies split the same GPU's tokens (DeepSeek's EPLB can produce them)."""
        return same_gpu_copies(self.phy2log_LP, self.num_gpus)

    def gpu_of_expert_LE(self) -> np.ndarray:
        """[L, E] GPU of each expert; only for placements without redundant copies."""
        if self.num_redundant:
            raise ValueError("gpu_of_expert is defined only for placements without redundant copies")
        out = np.empty((self.num_layers, self.num_experts), dtype=np.int64)
        gpu = self.gpu_of_slot()
        for l in range(self.num_layers):
            out[l, self.phy2log_LP[l]] = gpu
        return out

    # -- helpers -----------------------------------------------------------------------------------
    def with_(self, **changes: Any) -> "Placement":
        return replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        """The same experts in the same slots on the same GPUs and nodes (the layout; the layer numbering, the
        topology and the report are descriptions of it and do not count)."""
        if not isinstance(other, Placement):
            return NotImplemented
        return ((self.num_gpus, self.num_nodes, self.num_experts) == (other.num_gpus, other.num_nodes, other.num_experts)
                and self.phy2log_LP.shape == other.phy2log_LP.shape
                and bool((self.phy2log_LP == other.phy2log_LP).all()))

    __hash__ = None  # type: ignore[assignment]
