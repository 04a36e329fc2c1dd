"""The ``Placement``: which logical expert each physical slot of each layer holds.

Slots are GPU-major: slot p of a layer sits on GPU ``p // (P / G)``; this is the layout SGLang, vLLM and
DeepSeek's EPLB use, so every export is a reshaping. With redundant copies (P > E) a logical expert has
several slots; its tokens are split **evenly** among its replicas (as SGLang and vLLM dispatch), which is
what load balance is computed with (``gpu_load_LG``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from placer.core.topology import Topology

STATUSES = ("OPTIMAL", "FEASIBLE", "HEURISTIC")
MODES = ("ep", "coherent")


@dataclass(frozen=True, eq=False)
class Placement:
    """A placement of every layer's experts on GPUs, with how it was obtained.

    phy2log_LP: [L, P] logical expert held by each physical slot, slots GPU-major.
    status: OPTIMAL (proved optimal for its objective), FEASIBLE (a solver's best, with bound and gap),
        HEURISTIC (a baseline with no bound).
    objective / objective_name: the value the solver optimised and what it is (for example
        ``coherent_pair_hops``); bound: a proven lower bound on it; gap: (objective - bound) / objective.
    mode: the traffic model solved for ("ep" or "coherent").
    model_layer_indices: the model's decoder-layer index of each MoE layer (from the trace).
    """

    phy2log_LP: np.ndarray
    num_gpus: int
    num_experts: int
    num_nodes: int = 1
    solver: str = "manual"
    status: str = "HEURISTIC"
    objective: float | None = None
    objective_name: str | None = None
    bound: float | None = None
    gap: float | None = None
    wall_time_s: float = 0.0
    mode: str = "ep"
    source: str | None = None
    model_layer_indices: tuple[int, ...] | None = None
    topology: Topology | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.array(self.phy2log_LP, dtype=np.int64, copy=True)
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
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.model_layer_indices is not None:
            idx = tuple(int(i) for i in self.model_layer_indices)
            if len(idx) != L:
                raise ValueError(f"model_layer_indices has {len(idx)} entries, the placement {L} layers")
            object.__setattr__(self, "model_layer_indices", idx)
        if self.topology is not None and (self.topology.num_gpus, self.topology.num_nodes) != (G, N):
            raise ValueError(f"topology has {self.topology.num_gpus} GPUs in {self.topology.num_nodes} nodes, "
                             f"the placement {G} GPUs in {N} nodes")

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

    def same_layout(self, other: "Placement") -> bool:
        """True if both place the same experts in the same slots on the same GPUs and nodes."""
        return (self.phy2log_LP.shape == other.phy2log_LP.shape
                and bool((self.phy2log_LP == other.phy2log_LP).all())
                and (self.num_gpus, self.num_nodes, self.num_experts) == (other.num_gpus, other.num_nodes, other.num_experts))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Placement):
            return NotImplemented
        a, b = self.__dict__.copy(), other.__dict__.copy()
        a.pop("_l2p", None)
        b.pop("_l2p", None)
        pa_, pb_ = a.pop("phy2log_LP"), b.pop("phy2log_LP")
        return pa_.shape == pb_.shape and bool((pa_ == pb_).all()) and a == b

    __hash__ = None  # type: ignore[assignment]
