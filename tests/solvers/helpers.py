"""Small problems for the solver tests: synthetic traces turned into placement problems, and brute force."""

from __future__ import annotations

import itertools

import numpy as np

from placer.core.stats.core import compute_stats
from placer.core.topology import Topology
from placer.core.trace.reader import concat_batches
from placer.core.trace.schema import RoutingBatch
from placer.synth import SynthConfig, generate
from solvers.problem import PlacementProblem


def trace(layers: int, experts: int, top_k: int, tokens: int, seed: int = 0, clusters: int = 2,
          affinity: float = 0.7, drop_rate: float = 0.0, zipf: float = 1.0):
    meta, batches = generate(SynthConfig(layers=layers, experts=experts, top_k=top_k, tokens=tokens, seed=seed,
                                         clusters=clusters, affinity=affinity, drop_rate=drop_rate, zipf=zipf))
    return meta, concat_batches(list(batches))


def problem_of(batch: RoutingBatch, experts: int, gpus: int, nodes: int = 1, redundant: int = 0,
               mode: str = "ep", paths: bool = True) -> PlacementProblem:
    T, L, K = batch.experts_TLK.shape
    st = compute_stats([batch], L, experts, K)
    return PlacementProblem(
        load_LE=st.load_LE, topology=Topology(gpus, nodes), num_redundant=redundant, mode=mode, top_k=K,
        coact_LEE=st.coact_LEE, trans_LEE=st.trans_LEE,
        paths_TLK=batch.experts_TLK if paths else None, present_TL=batch.present_TL if paths else None,
        seq_T=batch.seq_T if paths else None)


def labelled_layers(P: int, G: int) -> np.ndarray:
    """Every assignment of P items to G GPUs with P/G each ([n, P] GPU of each item)."""
    s = P // G
    return np.array(sorted(set(itertools.permutations(np.arange(P) // s))), dtype=np.int64)


def brute_force(inst, value, feasible) -> float:
    """The least ``value(gpu_LP)`` over every feasible assignment of every layer."""
    rows = labelled_layers(inst.P, inst.G)
    best = np.inf
    for combo in itertools.product(range(len(rows)), repeat=inst.L):
        gpu = rows[list(combo)]
        if feasible(gpu):
            best = min(best, value(gpu))
    return best
