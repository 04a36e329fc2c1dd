"""Moves between two placements of one model on one set of GPUs: what must travel when a serving stack switches
from CURRENT to NEW.

A **move** is one expert copy that NEW puts on a GPU that does not hold that expert in CURRENT (per layer): its
weights must be loaded there. Reordering slots inside a GPU is free, and so is a second copy of an expert the GPU
already holds. GPU names are arbitrary, so before counting, NEW's GPUs are matched to CURRENT's to minimise the
moves (``align``): an assignment problem, solved exactly, over renamings that keep the node structure (whole
nodes map to whole nodes, and GPUs inside a node to GPUs of the matched node), so that every objective of the
cost model keeps its value; inside each GPU, NEW's slots then keep CURRENT's slot of every expert they share.

The renaming changes no objective; only the measured split of an expert's tokens among its copies can shift a
little, because the replica rule takes an expert's copies in slot order (``Placement.slots_for_tokens``).

Bytes: a move is served from a GPU of the same node that holds the expert in CURRENT if there is one (NVLink),
else across nodes (the network).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ortools.graph.python import linear_sum_assignment

from placer.core.placement import Placement


@dataclass(frozen=True)
class MoveCount:
    """Moves from CURRENT to NEW.

    moves_L: [L] expert copies loaded onto a GPU that did not hold the expert. intra_L / inter_L: [L] of them
    served inside the node / across nodes. intra_G / inter_G: [G] the same by the GPU they are loaded onto.
    slots: the physical slots of the placement (per layer).
    """

    moves_L: np.ndarray
    intra_L: np.ndarray
    inter_L: np.ndarray
    slots: int
    intra_G: np.ndarray
    inter_G: np.ndarray

    @property
    def total(self) -> int:
        return int(self.moves_L.sum())

    @property
    def share(self) -> float:
        """Moves as a share of all expert copies (slots x layers)."""
        return self.total / (self.slots * len(self.moves_L))

    def to_dict(self, expert_bytes: float | None = None) -> dict:
        d = {"moves": self.total, "moves_per_layer_max": int(self.moves_L.max(initial=0)),
             "share_of_copies": round(self.share, 6), "intra_node_moves": int(self.intra_L.sum()),
             "inter_node_moves": int(self.inter_L.sum()), "moves_L": self.moves_L.tolist()}
        if expert_bytes is not None:
            d["bytes"] = bytes_moved(d["intra_node_moves"], d["inter_node_moves"], expert_bytes)
        return d

    def transfer_us(self, expert_bytes: float, topology) -> float:
        """The time to load the moved weights when every GPU receives its copies at once: the busiest receiver's
        NVLink and network bytes over the topology's bandwidths (the two links in parallel; no latency)."""
        intra = self.intra_G * expert_bytes / (topology.intra_bw_gbs * 1e3)
        inter = self.inter_G * expert_bytes / (topology.inter_bw_gbs * 1e3)
        return float(np.maximum(intra, inter).max(initial=0.0))


def bytes_moved(intra_node_moves: int, inter_node_moves: int, expert_bytes: float) -> dict[str, float]:
    """The weights the moves carry inside nodes, across nodes and in all, ``expert_bytes`` per copy."""
    return {"intra_node": float(intra_node_moves * expert_bytes), "inter_node": float(inter_node_moves * expert_bytes),
            "total": float((intra_node_moves + inter_node_moves) * expert_bytes)}


def check_same_shape(current: Placement, new: Placement,
                     names: tuple[str, str] = ("the current placement", "the new one")) -> None:
    """ValueError naming the values (and the placements, as ``names`` calls them: current, new) if the two
    placements are not of one model on one set of GPUs."""
    for what, a, b in (("layers", current.num_layers, new.num_layers), ("experts", current.num_experts, new.num_experts),
                       ("slots per layer", current.num_slots, new.num_slots), ("GPUs", current.num_gpus, new.num_gpus),
                       ("nodes", current.num_nodes, new.num_nodes)):
        if a != b:
            raise ValueError(f"{names[0]} has {a} {what}, {names[1]} {b}")


def _held_LGE(p: Placement) -> np.ndarray:
    """[L, G, E] True where GPU g holds expert e at layer l."""
    L, G, E = p.num_layers, p.num_gpus, p.num_experts
    held = np.zeros((L, G, E), dtype=bool)
    held[np.arange(L)[:, None], p.gpu_of_slot()[None, :], p.phy2log_LP] = True
    return held


def count_moves(current: Placement, new: Placement) -> MoveCount:
    """The moves from ``current`` to ``new`` as the two files stand (GPU g of one is GPU g of the other)."""
    check_same_shape(current, new)
    cur, nxt = _held_LGE(current), _held_LGE(new)
    arrive = nxt & ~cur                                            # [L, G, E]
    G, N = current.num_gpus, current.num_nodes
    in_node_LNE = cur.reshape(cur.shape[0], N, G // N, -1).any(axis=2)   # some GPU of node n holds e
    node_G = np.arange(G) // (G // N)
    near = arrive & in_node_LNE[:, node_G, :]
    far = arrive & ~near
    return MoveCount(arrive.sum(axis=(1, 2)), near.sum(axis=(1, 2)), far.sum(axis=(1, 2)), current.num_slots,
                     near.sum(axis=(0, 2)), far.sum(axis=(0, 2)))


def _assignment(cost: np.ndarray) -> np.ndarray:
    """The permutation ``match`` minimising ``sum_i cost[i, match[i]]`` (integer costs)."""
    n = cost.shape[0]
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    solver.add_arcs_with_cost(ii.ravel(), jj.ravel(), cost.astype(np.int64).ravel())
    status = solver.solve()
    assert status == solver.OPTIMAL, f"linear sum assignment status {status}"
    return np.array([solver.right_mate(i) for i in range(n)], dtype=np.int64)


def gpu_matching(current: Placement, new: Placement) -> np.ndarray:
    """[G] the GPU of CURRENT each GPU of NEW becomes, minimising the moves over all layers, nodes kept whole."""
    check_same_shape(current, new)
    cur, nxt = _held_LGE(current), _held_LGE(new)
    # keep[h, g]: expert copies of NEW's GPU h that CURRENT's GPU g already holds (summed over layers).
    keep = np.einsum("lhe,lge->hg", nxt.astype(np.int64), cur.astype(np.int64))
    G, N = current.num_gpus, current.num_nodes
    gpn = G // N
    # Step 1: inside every pair (NEW's node m, CURRENT's node n), the best matching of their GPUs.
    inner = np.empty((N, N, gpn), dtype=np.int64)
    value = np.empty((N, N), dtype=np.int64)
    for m in range(N):
        for n in range(N):
            block = keep[m * gpn:(m + 1) * gpn, n * gpn:(n + 1) * gpn]
            inner[m, n] = _assignment(-block)
            value[m, n] = block[np.arange(gpn), inner[m, n]].sum()
    # Step 2: the nodes, matched as wholes.
    node_match = _assignment(-value) if N > 1 else np.zeros(1, dtype=np.int64)
    out = np.empty(G, dtype=np.int64)
    for m in range(N):
        n = node_match[m]
        out[m * gpn:(m + 1) * gpn] = n * gpn + inner[m, n]
    return out


def align(current: Placement, new: Placement) -> Placement:
    """NEW with its GPUs renamed to their matches in CURRENT (``gpu_matching``) and, inside every GPU, each
    expert that CURRENT's GPU also holds kept in CURRENT's slot; the same layout up to these free renamings, so
    that the moves counted between the two files as they stand are the fewest."""
    match = gpu_matching(current, new)
    L, P, spg = new.num_layers, new.num_slots, new.slots_per_gpu
    rows = np.empty((L, P), dtype=np.int64)
    for h in range(new.num_gpus):
        g = match[h]
        mine = new.phy2log_LP[:, h * spg:(h + 1) * spg]
        theirs = current.phy2log_LP[:, g * spg:(g + 1) * spg]
        for l in range(L):
            rows[l, g * spg:(g + 1) * spg] = _keep_slots(mine[l], theirs[l])
    return new.with_(phy2log_LP=rows)


def _keep_slots(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """``mine`` (one GPU's experts) reordered so that an expert ``theirs`` holds stays in its slot there."""
    out = np.full(len(mine), -1, dtype=np.int64)
    rest = list(mine)
    for k, e in enumerate(theirs):
        if e in rest:
            out[k] = e
            rest.remove(e)
    free = np.nonzero(out < 0)[0]
    out[free] = rest
    return out
