"""The cost model: what a placement costs on a trace (GPU load, traffic, estimated time per layer).

The definitions are in ``docs/cost-model.md``; in short, with token index t (0-based over the whole trace),
home GPU ``home_gpu(seq_T, G)`` and the replica rule ``Placement.slots_for_tokens`` (replica t mod cnt):

- load: (token, expert) pairs served per GPU and layer; max/mean per layer, worst layer.
- ``ep``: remote GPUs |S_l \\ {home}| and remote nodes per token-layer; DeepEP-style bytes (one network
  message per remote node, forwarded over NVLink inside it) attributed to the GPU that sends them.
- ``coherent``: messages |S_l| |S_l+1| - |S_l ∩ S_l+1| between adjacent layers, cross-node messages,
  expert-pair hops (linear in ``trans_LEE``), and the entry from / exit to home, reported separately.
- time: per step and layer, the slowest GPU's expert compute plus two communication phases (the slowest
  GPU's link time in each); summed over steps and layers.

Everything streams over batches (``TraceEvaluator.add``) and is exact; the per-token loop is compiled with
numba and checked in the tests against a plain per-token Python simulation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from numba import njit

from placer.core.mode import TRAFFIC_FIGURES, TrafficFigure, TrafficMode
from placer.core.placement import Placement
from placer.core.topology import Topology, home_gpu
from placer.core.trace.reader import TraceDataset, TraceReader
from placer.core.trace.schema import RoutingBatch

# Rows of the per-layer counters (``counts_CL``).
C_PRESENT = 0  # tokens present at the layer
# ep
C_REMOTE_GPUS = 1
C_REMOTE_NODES = 2
# coherent (row l holds the transition l-1 -> l)
C_MESSAGES = 1
C_NODE_MESSAGES = 2
C_PAIR_HOPS = 3
C_NODE_PAIR_HOPS = 4
C_PAIR_TOKENS = 5
C_ENTRY = 6
C_NODE_ENTRY = 7
C_EXIT = 8
C_NODE_EXIT = 9
# ep: the distinct GPUs / nodes of S_l(t), home or not (what a placement controls; the home rank is set by
# attention data parallelism): remote GPUs averaged over the G rotations of home ranks = (G-1)/G x these.
C_DISPATCH_GPUS = 10
C_DISPATCH_NODES = 11
NUM_COUNTERS = 12

# The EvalResult fields each traffic model's counters fill: per layer (from the model's ``first_layer``: coherent
# counts the transitions l-1 -> l) and summed over the layers.
_LAYER_COUNTS: dict[TrafficMode, tuple[tuple[str, int], ...]] = {
    TrafficMode.EP: (("remote_gpus_L", C_REMOTE_GPUS), ("remote_nodes_L", C_REMOTE_NODES),
                     ("dispatch_gpus_L", C_DISPATCH_GPUS), ("dispatch_nodes_L", C_DISPATCH_NODES)),
    TrafficMode.COHERENT: (("messages_L1", C_MESSAGES), ("node_messages_L1", C_NODE_MESSAGES),
                           ("pair_hops_L1", C_PAIR_HOPS), ("node_pair_hops_L1", C_NODE_PAIR_HOPS),
                           ("pair_tokens_L1", C_PAIR_TOKENS)),
}
_TOTAL_COUNTS: dict[TrafficMode, tuple[tuple[str, int], ...]] = {
    TrafficMode.EP: (),
    TrafficMode.COHERENT: (("entry_messages", C_ENTRY), ("node_entry_messages", C_NODE_ENTRY),
                           ("exit_messages", C_EXIT), ("node_exit_messages", C_NODE_EXIT)),
}
# What ``EvalResult.to_dict`` writes of each traffic model, under the model's name.
_JSON_FIELDS: dict[TrafficMode, tuple[str, ...]] = {
    TrafficMode.EP: ("token_layers_L", "remote_gpus_L", "remote_nodes_L"),
    TrafficMode.COHERENT: ("pair_tokens_L1", "messages_L1", "node_messages_L1", "pair_hops_L1", "node_pair_hops_L1",
                           "entry_messages", "node_entry_messages", "exit_messages", "node_exit_messages"),
}

# Rows of the per-GPU send counters (``sends_XLG``): messages GPU g sends for layer l, by phase and link.
# ep: phase A = dispatch, phase B = combine. coherent: phase A = the arrival of layer l's inputs (entry
# from home at layer 0, messages from S_l-1 otherwise), phase B = the exit home after the last layer.
A_INTRA, A_INTER, B_INTRA, B_INTER = 0, 1, 2, 3


@njit(cache=True)
def _accumulate(ex_TLK, present_TL, home_T, t0, l2p_LER, cnt_LE, gpu_of_slot_P, node_of_gpu_G, coherent,
                slot_tok_LP, sends_XLG, counts_CL):
    """Add the counts of T consecutive tokens (token index t0 + t) to the accumulators, in place."""
    T, L, K = ex_TLK.shape
    gl = np.empty(K, np.int64)   # distinct GPUs of the token at this layer, increasing
    gk = np.empty(K, np.int64)   # GPU serving each rank at this layer
    pgl = np.empty(K, np.int64)  # the same at the previous layer
    pgk = np.empty(K, np.int64)
    for t in range(T):
        h = home_T[t]
        hn = node_of_gpu_G[h]
        ti = t0 + t
        prev_ok = False
        npg = 0
        for l in range(L):
            if not present_TL[t, l]:
                prev_ok = False
                continue
            counts_CL[C_PRESENT, l] += 1
            # Step 1: the slot of each rank (replica t mod cnt) and the sorted set of distinct GPUs.
            ng = 0
            for k in range(K):
                e = ex_TLK[t, l, k]
                s = l2p_LER[l, e, ti % cnt_LE[l, e]]
                slot_tok_LP[l, s] += 1
                g = gpu_of_slot_P[s]
                gk[k] = g
                dup = False
                for j in range(ng):
                    if gl[j] == g:
                        dup = True
                        break
                if not dup:
                    j = ng
                    while j > 0 and gl[j - 1] > g:
                        gl[j] = gl[j - 1]
                        j -= 1
                    gl[j] = g
                    ng += 1
            if not coherent:
                # Step 2 (ep): dispatch from home, one network message per remote node landing on its
                # lowest GPU of S_l (GPUs of a node are consecutive, so they are adjacent in ``gl``).
                prev_node = -1
                arrival = -1
                counts_CL[C_DISPATCH_GPUS, l] += ng
                for j in range(ng):
                    u = gl[j]
                    n = node_of_gpu_G[u]
                    if n != prev_node:
                        counts_CL[C_DISPATCH_NODES, l] += 1
                    if u != h:
                        counts_CL[C_REMOTE_GPUS, l] += 1
                        if n == hn:
                            sends_XLG[A_INTRA, l, h] += 1
                            sends_XLG[B_INTRA, l, u] += 1
                        elif n != prev_node:
                            counts_CL[C_REMOTE_NODES, l] += 1
                            arrival = u
                            sends_XLG[A_INTER, l, h] += 1
                            sends_XLG[B_INTER, l, u] += 1
                        else:
                            sends_XLG[A_INTRA, l, arrival] += 1
                            sends_XLG[B_INTRA, l, u] += 1
                    prev_node = n
            else:
                # Step 2 (coherent): entry from home at layer 0, partials from S_l-1 otherwise.
                if l == 0:
                    for j in range(ng):
                        u = gl[j]
                        if u != h:
                            counts_CL[C_ENTRY, l] += 1
                            if node_of_gpu_G[u] != hn:
                                counts_CL[C_NODE_ENTRY, l] += 1
                                sends_XLG[A_INTER, l, h] += 1
                            else:
                                sends_XLG[A_INTRA, l, h] += 1
                elif prev_ok:
                    counts_CL[C_PAIR_TOKENS, l] += 1
                    for i in range(npg):
                        a = pgl[i]
                        for j in range(ng):
                            b = gl[j]
                            if a != b:
                                counts_CL[C_MESSAGES, l] += 1
                                if node_of_gpu_G[a] != node_of_gpu_G[b]:
                                    counts_CL[C_NODE_MESSAGES, l] += 1
                                    sends_XLG[A_INTER, l, a] += 1
                                else:
                                    sends_XLG[A_INTRA, l, a] += 1
                    for i in range(K):
                        a = pgk[i]
                        for j in range(K):
                            b = gk[j]
                            if a != b:
                                counts_CL[C_PAIR_HOPS, l] += 1
                                if node_of_gpu_G[a] != node_of_gpu_G[b]:
                                    counts_CL[C_NODE_PAIR_HOPS, l] += 1
                if l == L - 1:
                    for j in range(ng):
                        u = gl[j]
                        if u != h:
                            counts_CL[C_EXIT, l] += 1
                            if node_of_gpu_G[u] != hn:
                                counts_CL[C_NODE_EXIT, l] += 1
                                sends_XLG[B_INTER, l, u] += 1
                            else:
                                sends_XLG[B_INTRA, l, u] += 1
                for j in range(ng):
                    pgl[j] = gl[j]
                for j in range(K):
                    pgk[j] = gk[j]
                npg = ng
                prev_ok = True


def step_times_us(slot_tok_LP: np.ndarray, sends_XLG: np.ndarray, topology: Topology,
                  slots_per_gpu: int) -> tuple[np.ndarray, np.ndarray]:
    """[L] compute and [L] communication time of one step from its slot token counts and per-GPU sends.

    compute: the slowest GPU's sum of ``expert_time_us`` over its slots; communication: for each of the two
    phases, the slowest GPU's ``link_time_us`` of what it sends (messages of ``token_bytes`` each).
    """
    L, P = slot_tok_LP.shape
    G = P // slots_per_gpu
    compute_L = topology.expert_time_us(slot_tok_LP).reshape(L, G, slots_per_gpu).sum(-1).max(-1)
    tb = float(topology.token_bytes)
    phase_a = topology.link_time_us(sends_XLG[A_INTRA] * tb, sends_XLG[A_INTER] * tb,
                                    sends_XLG[A_INTRA], sends_XLG[A_INTER]).max(-1)
    phase_b = topology.link_time_us(sends_XLG[B_INTRA] * tb, sends_XLG[B_INTER] * tb,
                                    sends_XLG[B_INTRA], sends_XLG[B_INTER]).max(-1)
    return compute_L, phase_a + phase_b


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, empty)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass
class EvalResult:
    """What one placement costs on a trace (or, ``balance_only``, on a load matrix).

    load_LG: [L, G] tokens computed per GPU (exact counts on a trace; an even split of a load matrix).
    token_layers_L: [L] tokens present per layer (None for load-only input).
    ep: remote_gpus_L / remote_nodes_L: [L] sums over tokens of the remote GPUs / nodes dispatched to;
        dispatch_gpus_L / dispatch_nodes_L: [L] the same counting the home GPU / node too (|S_l(t)|).
    coherent: messages_L1, node_messages_L1, pair_hops_L1, node_pair_hops_L1, pair_tokens_L1: [L-1] per
        transition l -> l+1; entry/exit: messages from home before layer 0 and back home after the last.
    intra_bytes_L / inter_bytes_L: [L] bytes over NVLink / the network (coherent: into layer l, plus the
        exit at the last layer); intra_bytes_G / inter_bytes_G: [G] bytes each GPU sent.
    compute_us_L / comm_us_L: [L] estimated times, summed over steps.
    """

    name: str
    mode: TrafficMode
    num_layers: int
    num_experts: int
    num_slots: int
    num_gpus: int
    num_nodes: int
    load_LG: np.ndarray
    balance_only: bool = False
    tokens: int = 0
    tokens_per_step: int | None = None
    steps: int = 0
    token_layers_L: np.ndarray | None = None
    remote_gpus_L: np.ndarray | None = None
    remote_nodes_L: np.ndarray | None = None
    dispatch_gpus_L: np.ndarray | None = None
    dispatch_nodes_L: np.ndarray | None = None
    messages_L1: np.ndarray | None = None
    node_messages_L1: np.ndarray | None = None
    pair_hops_L1: np.ndarray | None = None
    node_pair_hops_L1: np.ndarray | None = None
    pair_tokens_L1: np.ndarray | None = None
    entry_messages: int = 0
    node_entry_messages: int = 0
    exit_messages: int = 0
    node_exit_messages: int = 0
    intra_bytes_L: np.ndarray | None = None
    inter_bytes_L: np.ndarray | None = None
    intra_bytes_G: np.ndarray | None = None
    inter_bytes_G: np.ndarray | None = None
    compute_us_L: np.ndarray | None = None
    comm_us_L: np.ndarray | None = None
    speedup: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- load balance ------------------------------------------------------------------------------
    @property
    def max_load_L(self) -> np.ndarray:
        return self.load_LG.max(axis=1)

    @property
    def mean_load_L(self) -> np.ndarray:
        return self.load_LG.mean(axis=1)

    @property
    def imbalance_L(self) -> np.ndarray:
        """[L] max/mean GPU load (1.0 = perfect balance; a layer without tokens counts as 1.0)."""
        return _ratio(self.max_load_L, self.mean_load_L, empty=1.0)

    @property
    def worst_layer(self) -> int:
        return int(np.argmax(self.imbalance_L))

    @property
    def mean_imbalance(self) -> float:
        return float(self.imbalance_L.mean())

    # -- traffic -----------------------------------------------------------------------------------
    @property
    def remote_gpus_per_token(self) -> float:
        """ep: mean remote GPUs a token is dispatched to per layer."""
        return float(_ratio(self.remote_gpus_L.sum(), self.token_layers_L.sum()))

    @property
    def remote_nodes_per_token(self) -> float:
        return float(_ratio(self.remote_nodes_L.sum(), self.token_layers_L.sum()))

    @property
    def messages_per_token(self) -> float:
        """coherent: mean inter-layer messages per token and transition."""
        return float(_ratio(self.messages_L1.sum(), self.pair_tokens_L1.sum()))

    @property
    def node_messages_per_token(self) -> float:
        return float(_ratio(self.node_messages_L1.sum(), self.pair_tokens_L1.sum()))

    @property
    def pair_hops_per_token(self) -> float:
        return float(_ratio(self.pair_hops_L1.sum(), self.pair_tokens_L1.sum()))

    def traffic_figures(self, multi_node: bool = True) -> list[tuple[TrafficFigure, float]]:
        """The traffic model's figures per token (``TRAFFIC_FIGURES``; without the node ones if not
        ``multi_node``); none for balance only."""
        if self.balance_only:
            return []
        return [(f, float(_ratio(getattr(self, f.counts).sum(), getattr(self, f.tokens).sum())))
                for f in TRAFFIC_FIGURES[self.mode] if multi_node or not f.nodes_only]

    @property
    def headline_traffic(self) -> float | None:
        """The traffic model's first figure per token (ep: remote GPUs, coherent: messages); None for balance only."""
        figures = self.traffic_figures()
        return figures[0][1] if figures else None

    # -- time --------------------------------------------------------------------------------------
    @property
    def time_us_L(self) -> np.ndarray | None:
        if self.compute_us_L is None:
            return None
        return self.compute_us_L + self.comm_us_L

    @property
    def total_us(self) -> float | None:
        t = self.time_us_L
        return None if t is None else float(t.sum())

    def summary(self) -> dict[str, Any]:
        """The headline figures (what the terminal table shows)."""
        d: dict[str, Any] = {
            "name": self.name,
            "mean_imbalance": self.mean_imbalance,
            "worst_layer": self.worst_layer,
            "worst_imbalance": float(self.imbalance_L[self.worst_layer]),
        }
        if self.balance_only:
            return d
        d.update({f.key: v for f, v in self.traffic_figures()})
        d["intra_bytes"] = int(self.intra_bytes_L.sum())
        d["inter_bytes"] = int(self.inter_bytes_L.sum())
        d["total_us"] = self.total_us
        d["speedup"] = self.speedup
        return d

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: headline figures, then per-layer arrays."""
        def arr(a: np.ndarray | None) -> list | None:
            if a is None:
                return None
            a = np.asarray(a)
            return a.tolist() if a.dtype.kind in "iub" else [round(float(x), 6) for x in a.ravel()]

        d: dict[str, Any] = {
            "name": self.name,
            "mode": self.mode.value,
            "balance_only": self.balance_only,
            "shape": {"layers": self.num_layers, "experts": self.num_experts, "slots": self.num_slots,
                      "gpus": self.num_gpus, "nodes": self.num_nodes},
            "tokens": self.tokens,
            "tokens_per_step": self.tokens_per_step,
            "steps": self.steps,
            "summary": self.summary(),
            "load": {
                "max_L": arr(self.max_load_L), "mean_L": arr(self.mean_load_L),
                "max_over_mean_L": arr(self.imbalance_L),
                "per_gpu_LG": [arr(r) for r in self.load_LG],
            },
        }
        if self.balance_only:
            d["note"] = "load-only statistics: only load balance was evaluated (traffic and time need a trace)"
            return d
        values = {f: getattr(self, f) for f in _JSON_FIELDS[self.mode]}
        d[self.mode.value] = {f: v if isinstance(v, int) else arr(v) for f, v in values.items()}
        d["bytes"] = {"intra_L": arr(self.intra_bytes_L), "inter_L": arr(self.inter_bytes_L),
                      "intra_sent_G": arr(self.intra_bytes_G), "inter_sent_G": arr(self.inter_bytes_G)}
        d["time_us"] = {"compute_L": arr(self.compute_us_L), "comm_L": arr(self.comm_us_L),
                        "layer_L": arr(self.time_us_L), "total": self.total_us}
        return d


def check_fits(placement: Placement, num_layers: int, num_experts: int, what: str = "the trace") -> None:
    """ValueError naming the values if ``placement`` is for another number of layers or experts."""
    if (placement.num_layers, placement.num_experts) != (num_layers, num_experts):
        raise ValueError(f"placement has {placement.num_layers} layers x {placement.num_experts} experts, "
                         f"{what} {num_layers} layers x {num_experts} experts")


def _check_topology(placement: Placement, topology: Topology) -> None:
    if (topology.num_gpus, topology.num_nodes) != (placement.num_gpus, placement.num_nodes):
        raise ValueError(f"topology has {topology.num_gpus} GPUs in {topology.num_nodes} nodes, the placement "
                         f"{placement.num_gpus} GPUs in {placement.num_nodes} nodes")


class TraceEvaluator:
    """Streaming evaluation of one placement: ``add(batch)`` in trace order, then ``result()``.

    Batches need ``experts_TLK``, ``seq_T`` and (if the trace has missing rows) ``present_TL``. Token
    indices continue across ``add`` calls. ``tokens_per_step``: cut the trace into steps of that many
    consecutive tokens for the time estimate (None: the whole trace is one step).
    """

    def __init__(self, placement: Placement, topology: Topology | None = None,
                 mode: TrafficMode | str = TrafficMode.EP, tokens_per_step: int | None = None,
                 name: str | None = None) -> None:
        mode = TrafficMode.parse(mode)
        if tokens_per_step is not None and tokens_per_step < 1:
            raise ValueError(f"tokens per step ({tokens_per_step}) must be positive")
        topology = topology or placement.topology or Topology(placement.num_gpus, placement.num_nodes)
        _check_topology(placement, topology)
        self.placement, self.topology, self.mode = placement, topology, mode
        self.tokens_per_step = tokens_per_step
        self.name = name or placement.report.solver
        L, P, G = placement.num_layers, placement.num_slots, placement.num_gpus
        self._l2p = placement.log2phy_LER()
        self._cnt = placement.logcnt_LE
        self._gpu_of_slot = placement.gpu_of_slot()
        self._node_of_gpu = topology.node_of_gpu()
        self.tokens = 0
        self.steps = 0
        # Totals over the trace and the accumulators of the current step.
        self._slot_tok = np.zeros((L, P), np.int64)
        self._sends = np.zeros((4, L, G), np.int64)
        self._counts = np.zeros((NUM_COUNTERS, L), np.int64)
        self._step_slot_tok = np.zeros((L, P), np.int64)
        self._step_sends = np.zeros((4, L, G), np.int64)
        self._step_tokens = 0
        self._compute_L = np.zeros(L)
        self._comm_L = np.zeros(L)

    def add(self, batch: RoutingBatch, first_token: int | None = None) -> None:
        """Count a batch of consecutive tokens. ``first_token``: the trace index of its first token (the
        replica rule uses it; default: right after the tokens added so far)."""
        T = len(batch)
        if T == 0:
            return
        ex = batch.experts_TLK
        if ex.ndim != 3 or ex.shape[1] != self.placement.num_layers:
            raise ValueError(f"the trace has {ex.shape[1] if ex.ndim == 3 else '?'} layers, the placement "
                             f"{self.placement.num_layers}")
        if batch.seq_T is None:
            raise ValueError("the cost model needs each token's sequence id (seq_T) for its home GPU")
        if ex.size and int(ex.max()) >= self.placement.num_experts:
            raise ValueError(f"the trace routes to expert {int(ex.max())}, the placement has "
                             f"{self.placement.num_experts} experts")
        present = batch.present_or_ones()
        home = home_gpu(batch.seq_T, self.placement.num_gpus)
        base = self.tokens if first_token is None else int(first_token)
        start = 0
        while start < T:
            n = T - start
            if self.tokens_per_step is not None:
                n = min(n, self.tokens_per_step - self._step_tokens)
            sl = slice(start, start + n)
            _accumulate(ex[sl], present[sl], home[sl], base + start, self._l2p, self._cnt,
                        self._gpu_of_slot, self._node_of_gpu, self.mode is TrafficMode.COHERENT,
                        self._step_slot_tok, self._step_sends, self._counts)
            self._step_tokens += n
            start += n
            if self.tokens_per_step is not None and self._step_tokens == self.tokens_per_step:
                self.close_step()
        self.tokens += T

    def close_step(self) -> None:
        """End the current step here (a step shorter than ``tokens_per_step``, as replay's last one can be)."""
        if self._step_tokens == 0:
            return
        compute, comm = step_times_us(self._step_slot_tok, self._step_sends, self.topology,
                                      self.placement.slots_per_gpu)
        self._compute_L += compute
        self._comm_L += comm
        self._slot_tok += self._step_slot_tok
        self._sends += self._step_sends
        self._step_slot_tok[:] = 0
        self._step_sends[:] = 0
        self._step_tokens = 0
        self.steps += 1

    def result(self) -> EvalResult:
        """The result over the tokens added so far (closes a partial last step)."""
        self.close_step()
        p, topo = self.placement, self.topology
        L, G = p.num_layers, p.num_gpus
        load_LG = self._slot_tok.reshape(L, G, p.slots_per_gpu).sum(-1)
        tb = topo.token_bytes
        s, c = self._sends, self._counts
        res = EvalResult(
            name=self.name, mode=self.mode, num_layers=L, num_experts=p.num_experts, num_slots=p.num_slots,
            num_gpus=G, num_nodes=p.num_nodes, load_LG=load_LG, tokens=self.tokens,
            tokens_per_step=self.tokens_per_step, steps=self.steps, token_layers_L=c[C_PRESENT].copy(),
            intra_bytes_L=(s[A_INTRA] + s[B_INTRA]).sum(-1) * tb,
            inter_bytes_L=(s[A_INTER] + s[B_INTER]).sum(-1) * tb,
            intra_bytes_G=(s[A_INTRA] + s[B_INTRA]).sum(0) * tb,
            inter_bytes_G=(s[A_INTER] + s[B_INTER]).sum(0) * tb,
            compute_us_L=self._compute_L.copy(), comm_us_L=self._comm_L.copy(),
        )
        first = self.mode.model.first_layer
        for name, row in _LAYER_COUNTS[self.mode]:
            setattr(res, name, c[row, first:].copy())
        for name, row in _TOTAL_COUNTS[self.mode]:
            setattr(res, name, int(c[row].sum()))
        return res


TraceSource = Any  # a path, a list of paths, a TraceDataset/TraceReader, a RoutingBatch or an iterable of batches


def iter_source(source: TraceSource, batch_size: int = 65536) -> Iterator[RoutingBatch]:
    """Batches (with expert ids, present mask and sequence ids) of a trace given in any accepted form."""
    if isinstance(source, RoutingBatch):
        yield source
        return
    if isinstance(source, (str, os.PathLike)) or (
            isinstance(source, (list, tuple)) and source and isinstance(source[0], (str, os.PathLike))):
        source = TraceDataset(source)
    if isinstance(source, (TraceDataset, TraceReader)):
        yield from source.iter_batches(batch_size=batch_size, fields=("experts", "present", "seq"))
        return
    yield from source


def evaluate_many(source: TraceSource, placements: Sequence[Placement], topology: Topology | None = None,
                  mode: TrafficMode | str = TrafficMode.EP, tokens_per_step: int | None = None,
                  names: Sequence[str] | None = None,
                  progress: Any = None) -> list[EvalResult]:
    """Evaluate several placements in one pass over the trace. ``progress(n)`` is called per batch."""
    names = list(names) if names is not None else [None] * len(placements)
    evals = [TraceEvaluator(p, topology, mode, tokens_per_step, name) for p, name in zip(placements, names)]
    for b in iter_source(source):
        for ev in evals:
            ev.add(b)
        if progress is not None:
            progress(len(b))
    if evals and evals[0].tokens == 0:
        raise ValueError("the trace has no tokens")
    return [ev.result() for ev in evals]


def evaluate_trace(source: TraceSource, placement: Placement, topology: Topology | None = None,
                   mode: TrafficMode | str = TrafficMode.EP, tokens_per_step: int | None = None,
                   name: str | None = None) -> EvalResult:
    """Evaluate one placement on a trace (see ``docs/cost-model.md``)."""
    return evaluate_many(source, [placement], topology, mode, tokens_per_step,
                         names=None if name is None else [name])[0]


def evaluate_load(load_LE: np.ndarray, placement: Placement, mode: TrafficMode | str = TrafficMode.EP,
                  name: str | None = None) -> EvalResult:
    """Load balance of ``placement`` for an expert load matrix (even split among replicas); balance only."""
    load_LE = np.asarray(load_LE, dtype=np.float64)
    if load_LE.ndim != 2:
        raise ValueError(f"load must be a [layers, experts] matrix, got shape {load_LE.shape}")
    check_fits(placement, *load_LE.shape, what="the load matrix")
    p = placement
    return EvalResult(name=name or p.report.solver, mode=TrafficMode.parse(mode), num_layers=p.num_layers, num_experts=p.num_experts,
                      num_slots=p.num_slots, num_gpus=p.num_gpus, num_nodes=p.num_nodes,
                      load_LG=p.gpu_load_LG(load_LE), balance_only=True)


def pair_hops_from_trans(trans_LEE: np.ndarray, placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """[L-1] expert-pair hops and [L-1] cross-node pair hops from transition counts, for a placement
    without redundant copies: ``sum_ij trans_LEE[l, i, j] [gpu(i) != gpu(j)]`` (and by node).

    Equals ``EvalResult.pair_hops_L1`` / ``node_pair_hops_L1`` of the trace the counts come from.
    """
    gpu_LE = placement.gpu_of_expert_LE()
    trans = np.asarray(trans_LEE)
    if trans.shape != (placement.num_layers - 1, placement.num_experts, placement.num_experts):
        raise ValueError(f"trans has shape {trans.shape}, the placement needs "
                         f"[{placement.num_layers - 1}, {placement.num_experts}, {placement.num_experts}]")
    node_LE = gpu_LE // (placement.num_gpus // placement.num_nodes)
    diff_gpu = gpu_LE[:-1, :, None] != gpu_LE[1:, None, :]
    diff_node = node_LE[:-1, :, None] != node_LE[1:, None, :]
    return (trans * diff_gpu).sum(axis=(1, 2)), (trans * diff_node).sum(axis=(1, 2))


def with_speedups(results: Iterable[EvalResult], reference: EvalResult) -> None:
    """Set each result's speedup = reference total / its total (in place)."""
    ref = reference.total_us
    for r in results:
        t = r.total_us
        r.speedup = None if (ref is None or not t) else ref / t
