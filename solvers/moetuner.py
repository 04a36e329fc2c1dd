"""``moetuner``: MoETuner's two integer programs (Go and Mahajan, 2025), written from the paper's
description with PuLP (backend CBC or HiGHS, ``--backend``).

Stage 1, per layer: split the experts into G clusters of E/G experts, minimising the total deviation of
each cluster's load from the layer's mean cluster load (balanced token processing).

Stage 2, all layers together: put the clusters of every layer on GPUs (one cluster per GPU), minimising
the largest per-link traffic divided by the link's bandwidth: the tokens that go from the clusters on
GPU g at layer l to the cluster on GPU g' at layer l+1 (from the expert-to-next-layer-expert transition
counts), times the token's bytes, over NVLink or the network (microseconds). The product of two
assignment variables is linearised with one continuous variable per pair of clusters and pair of GPUs, so
for large shapes (``(L - 1) G^4`` above ``JOINT_LIMIT``) stage 2 is solved transition by transition
instead (layer l+1's clusters given layer l's), which the placement records.

The objective reported is stage 2's (``moetuner_max_link_us``); status OPTIMAL only when every stage-1
program and the joint stage 2 are proven optimal. The project's cost terms of the result are in
``extra["terms"]`` for comparison. One copy per expert (no redundant slots). Options
(``SolveOptions.params``): ``backend`` (cbc | highs), ``stage2`` (auto | joint | sequential).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from placer.core.errors import MoeplaceError
from placer.core.objective import Quantity
from placer.core.placement import Placement
from solvers import milp
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver

JOINT_LIMIT = 20_000  # linearisation variables of the joint stage 2


def stage1(load_E: np.ndarray, G: int, backend: str, time_limit_s: float, threads: int, seed: int,
           name: str = "l") -> tuple[np.ndarray, float, milp.MilpResult]:
    """Cluster of each expert (clusters numbered by their smallest expert), total deviation, solve result."""
    import pulp

    # Data: E experts with their loads, G clusters of s experts, the mean cluster load.
    E = load_E.shape[0]
    s = E // G
    mean = float(load_E.sum()) / G
    prob = pulp.LpProblem(f"moetuner_stage1_{name}", pulp.LpMinimize)

    # Variables: y_{e}_{c} = expert e is in cluster c; dev_{c} = |load of cluster c - mean|.
    y = {(e, c): prob.add_variable(f"y_{e}_{c}", cat="Binary") for e in range(E) for c in range(G) if c <= e}
    dev = [prob.add_variable(f"dev_{c}", lowBound=0) for c in range(G)]

    # Constraints: every expert is in exactly one cluster (cluster numbers never exceed the expert's, which
    # numbers clusters by their smallest expert and removes their symmetry).
    for e in range(E):
        prob += pulp.lpSum(y[e, c] for c in range(G) if (e, c) in y) == 1
    # Every cluster has exactly s experts.
    for c in range(G):
        prob += pulp.lpSum(y[e, c] for e in range(E) if (e, c) in y) == s
    # The deviation bounds the cluster's load from above and below the mean.
    for c in range(G):
        load_c = pulp.lpSum(float(load_E[e]) * y[e, c] for e in range(E) if (e, c) in y)
        prob += dev[c] >= load_c - mean
        prob += dev[c] >= mean - load_c

    # Objective: the total deviation.
    prob += pulp.lpSum(dev)

    # Solve.
    res = milp.solve(prob, backend, time_limit_s, threads, seed)
    if res.status == "NONE":
        raise MoeplaceError(f"moetuner: stage 1 of layer {name} found no solution within {time_limit_s:.1f} s; raise --time-limit")
    cluster = np.array([next(c for c in range(G) if (e, c) in y and y[e, c].value() > 0.5) for e in range(E)])
    return cluster, float(res.objective), res


def cluster_traffic(trans_EE: np.ndarray, ca: np.ndarray, cb: np.ndarray, G: int) -> np.ndarray:
    """[G, G] tokens from cluster c at layer l to cluster c' at layer l+1."""
    out = np.zeros((G, G))
    np.add.at(out, (ca[:, None], cb[None, :]), trans_EE)
    return out


def stage2_joint(C_LCC: np.ndarray, cost_GG: np.ndarray, N: int, backend: str, time_limit_s: float,
                 threads: int, seed: int) -> tuple[np.ndarray, float, milp.MilpResult]:
    """[L, G] GPU of each cluster of every layer, the largest link time (us), solve result."""
    import pulp

    # Data: L-1 transitions of cluster-to-cluster tokens, G GPUs, microseconds per token per link.
    Lm1, G, _ = C_LCC.shape
    L = Lm1 + 1
    prob = pulp.LpProblem("moetuner_stage2", pulp.LpMinimize)

    # Variables: z_{l}_{c}_{g} = cluster c of layer l is on GPU g; w_{l}_{c}_{d}_{g}_{h} >= both
    # z_{l}_{c}_{g} and z_{l+1}_{d}_{h}; t_max = the largest link time.
    z = {(l, c, g): prob.add_variable(f"z_{l}_{c}_{g}", cat="Binary") for l in range(L) for c in range(G)
         for g in range(G)}
    w = {}
    for l in range(Lm1):
        for c, d in zip(*np.nonzero(C_LCC[l])):
            for g in range(G):
                for h in range(G):
                    if g != h:
                        w[l, c, d, g, h] = prob.add_variable(f"w_{l}_{c}_{d}_{g}_{h}", lowBound=0)
    t_max = prob.add_variable("t_max", lowBound=0)

    # Constraints: every cluster is on exactly one GPU, and every GPU holds exactly one cluster per layer.
    for l in range(L):
        for c in range(G):
            prob += pulp.lpSum(z[l, c, g] for g in range(G)) == 1
        for g in range(G):
            prob += pulp.lpSum(z[l, c, g] for c in range(G)) == 1
    # GPUs are interchangeable up to their links: layer 0's cluster 0 is on GPU 0 (all of layer 0 in
    # order on one node, where every GPU is alike).
    for c in (range(G) if N == 1 else range(1)):
        prob += z[0, c, c] == 1
    # w is 1 when cluster c of layer l is on g and cluster d of layer l+1 on h (linearised product).
    for (l, c, d, g, h), v in w.items():
        prob += v >= z[l, c, g] + z[l + 1, d, h] - 1
    # Every link's time at every transition is at most t_max.
    for l in range(Lm1):
        for g in range(G):
            for h in range(G):
                if g != h:
                    terms = [float(C_LCC[l, c, d] * cost_GG[g, h]) * w[l, c, d, g, h]
                             for c, d in zip(*np.nonzero(C_LCC[l]))]
                    if terms:
                        prob += pulp.lpSum(terms) <= t_max

    # Objective: the largest link time.
    prob += t_max

    # Solve.
    res = milp.solve(prob, backend, time_limit_s, threads, seed)
    if res.status == "NONE":
        raise MoeplaceError(f"moetuner: stage 2 found no solution within {time_limit_s:.1f} s; raise --time-limit")
    gpu = np.array([[next(g for g in range(G) if z[l, c, g].value() > 0.5) for c in range(G)] for l in range(L)])
    return gpu, float(res.objective), res


def stage2_sequential(C_LCC: np.ndarray, cost_GG: np.ndarray, backend: str, time_limit_s: float,
                      threads: int, seed: int) -> tuple[np.ndarray, float, list[milp.MilpResult]]:
    """Stage 2 transition by transition: layer 0's clusters in order, then each layer's clusters placed to
    minimise the largest link time of the transition into it, given the previous layer."""
    import pulp

    Lm1, G, _ = C_LCC.shape
    gpu = np.zeros((Lm1 + 1, G), dtype=np.int64)
    gpu[0] = np.arange(G)
    results = []
    worst = 0.0
    for l in range(Lm1):
        # Data: tokens from GPU g (holding cluster c of layer l) to cluster d of layer l+1.
        from_g = np.zeros((G, G))
        from_g[gpu[l]] = C_LCC[l]
        prob = pulp.LpProblem(f"moetuner_stage2_{l}", pulp.LpMinimize)
        # Variables: z_{d}_{h} = cluster d of layer l+1 is on GPU h; t_max.
        z = {(d, h): prob.add_variable(f"z_{l + 1}_{d}_{h}", cat="Binary") for d in range(G) for h in range(G)}
        t_max = prob.add_variable("t_max", lowBound=0)
        # Constraints: one GPU per cluster and one cluster per GPU.
        for d in range(G):
            prob += pulp.lpSum(z[d, h] for h in range(G)) == 1
        for h in range(G):
            prob += pulp.lpSum(z[d, h] for d in range(G)) == 1
        # Every link's time is at most t_max.
        for g in range(G):
            for h in range(G):
                if g != h:
                    prob += pulp.lpSum(float(from_g[g, d] * cost_GG[g, h]) * z[d, h] for d in range(G)) <= t_max
        # Objective: the largest link time of this transition.
        prob += t_max
        res = milp.solve(prob, backend, time_limit_s / Lm1, threads, seed)
        if res.status == "NONE":
            raise MoeplaceError(f"moetuner: stage 2 (transition {l}) found no solution")
        gpu[l + 1] = [next(h for h in range(G) if z[d, h].value() > 0.5) for d in range(G)]
        worst = max(worst, float(res.objective))
        results.append(res)
    return gpu, worst, results


@solver("moetuner", summary="MoETuner's two integer programs: balanced clusters, then clusters to GPUs by link time",
        params=("backend", "stage2"), affinity=True, copies=False)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    backend = milp.backend_of("moetuner", options.params)
    milp.require("moetuner", backend)
    mode2 = options.params.get("stage2", "auto")
    if mode2 not in ("auto", "joint", "sequential"):
        raise ValueError(f"moetuner: stage2 {mode2!r} is not one of auto, joint, sequential")
    L, E, G = problem.num_layers, problem.num_experts, problem.topology.num_gpus
    threads = options.threads or 1

    # Stage 1: balanced clusters, layer by layer (half the time).
    clusters = np.empty((L, E), dtype=np.int64)
    dev_total, proven = 0.0, True
    for l in range(L):
        clusters[l], dev, res = stage1(problem.load_LE[l], G, backend, 0.5 * options.time_limit_s / L, threads,
                                       options.seed, str(l))
        dev_total += dev
        proven &= res.status == "OPTIMAL"

    # Stage 2: clusters to GPUs (the other half).
    C = np.stack([cluster_traffic(np.asarray(problem.trans_LEE[l], dtype=np.float64), clusters[l],
                                  clusters[l + 1], G) for l in range(L - 1)]) if L > 1 else np.zeros((0, G, G))
    cost = problem.topology.token_link_us_GG()
    size = (L - 1) * G ** 4
    joint = mode2 == "joint" or (mode2 == "auto" and size <= JOINT_LIMIT)
    bound = None
    if L == 1:
        gpu_LC, t_max = np.arange(G)[None, :], 0.0
        bound = 0.0
    elif joint:
        gpu_LC, t_max, res = stage2_joint(C, cost, problem.topology.num_nodes, backend, 0.5 * options.time_limit_s,
                                          threads, options.seed)
        proven &= res.status == "OPTIMAL"
        bound = res.bound
    else:
        gpu_LC, t_max, _ = stage2_sequential(C, cost, backend, 0.5 * options.time_limit_s, threads, options.seed)
        proven = False

    # The placement: expert e of layer l on the GPU of its cluster.
    gpu_LE = np.take_along_axis(gpu_LC, clusters, axis=1)
    extra: dict[str, Any] = {"backend": backend, "stage1_deviation": dev_total,
                             "stage2": "joint" if joint else "sequential"}
    return milp.placement_of(problem, options, gpu_LE, "moetuner", start, proven, Quantity.MOETUNER_MAX_LINK_US,
                             t_max, bound, extra)
