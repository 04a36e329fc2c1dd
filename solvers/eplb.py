"""``eplb``: DeepSeek's expert-parallelism load balancer, written from its published description.

Hierarchical policy (when the expert groups divide evenly among the nodes, to keep DeepSeek-V3's
group-limited routing inside a node):

1. pack the expert groups (consecutive blocks of E / groups experts) to nodes, balancing node load;
2. inside each node, replicate its hottest experts (one extra copy at a time to the expert with the largest
   load per replica) until the node's P / N slots are filled;
3. pack each node's physical experts (load split evenly among replicas) to its GPUs, P / G per GPU.

Global policy (otherwise): the same with one group and one node: replicate across the whole cluster, then
pack to all GPUs. Packing is longest-processing-time first with an equal number of items per pack.

Options (``SolveOptions.params``): ``groups`` (default 1; DeepSeek-V3 uses its router's ``n_group`` = 8).
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.layout import pack_balanced, replicate_hottest
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver


def rebalance_layer(load_E: np.ndarray, num_slots: int, groups: int, nodes: int,
                    gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's physical experts as ([P] logical expert, [P] GPU, [P] position on the GPU) for its load."""
    E = load_E.shape[0]
    if E % groups:
        raise ValueError(f"experts ({E}) must divide evenly into groups ({groups})")
    if groups % nodes:  # the global policy: groups cannot stay whole inside nodes
        groups, nodes = 1, 1
    group_size, groups_per_node = E // groups, groups // nodes
    gpus_per_node, slots_per_gpu = gpus // nodes, num_slots // gpus

    # Step 1: pack the expert groups to nodes, balancing their total load.
    group_load = load_E.reshape(groups, group_size).sum(axis=1)
    node_of_group, rank_of_group = pack_balanced(group_load, nodes, groups_per_node)
    # A node's experts in local order: its groups in the order they were packed, experts by id inside.
    order = np.lexsort((rank_of_group, node_of_group))
    local_experts = (order[:, None] * group_size + np.arange(group_size)).reshape(nodes, -1)

    parts = []
    for n in range(nodes):
        experts = local_experts[n]
        # Step 2: replicate the node's hottest experts to fill its num_slots / nodes slots.
        phy, cnt = replicate_hottest(load_E[experts], num_slots // nodes)
        # Step 3: pack the node's physical experts to its GPUs by load per replica.
        gpu, rank = pack_balanced(load_E[experts][phy] / cnt[phy], gpus_per_node, slots_per_gpu)
        parts.append((experts[phy], n * gpus_per_node + gpu, rank))
    return tuple(np.concatenate(a) for a in zip(*parts))


@solver("eplb", summary="DeepSeek's expert-parallelism load balancer (hierarchical when nodes divide the groups)",
        params=("groups",), warm_start=2)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    groups = options.params.get("groups", 1)
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"eplb: groups must be a positive integer, got {groups!r}")
    topo = problem.topology
    expert, gpu, rank = (np.stack(a) for a in zip(*(rebalance_layer(problem.load_LE[l], problem.num_slots, int(groups),
                                                                  topo.num_nodes, topo.num_gpus)
                                                  for l in range(problem.num_layers))))
    policy = "hierarchical" if groups > 1 and groups % topo.num_nodes == 0 else "global"
    report = problem.report("eplb", start, extra={"groups": int(groups), "policy": policy})
    return problem.placement(gpu, expert, report, order_LX=rank)
