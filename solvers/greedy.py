"""``greedy``: longest-processing-time balance of expert load, per layer.

1. With redundant slots, replicate the hottest experts first (one extra copy at a time to the expert with
   the largest load per replica, as EPLB does, but at most one copy per GPU); a replica carries load /
   copies (the even split of the replica rule).
2. Take the replicas in decreasing load and put each on the least-loaded GPU that has a free slot (ties:
   the lower GPU), preferring GPUs that do not hold a copy of the same expert yet; a copy left beside
   another of its expert is swapped away (``pack_balanced``), so no GPU holds two copies of one expert.

Uses expert load only; the classic 4/3-approximation of the largest GPU load when every GPU can take any
number of experts, here with P / G slots per GPU.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.layout import copies_cap, pack_balanced, replicate_hottest
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver


def greedy_layer(load_E: np.ndarray, num_slots: int, num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's replicas as ([P] expert, [P] GPU, [P] position on the GPU) from its expert load."""
    # Step 1: replicate the hottest experts.
    phy, cnt = replicate_hottest(load_E, num_slots, copies_cap(load_E.shape[0], num_slots, num_gpus))
    # Step 2: pack replicas in decreasing load to the least-loaded GPU with room.
    gpu, rank = pack_balanced(load_E[phy] / cnt[phy], num_gpus, num_slots // num_gpus, label_N=phy)
    return phy, gpu, rank


@solver("greedy", summary="longest-processing-time balance of expert load, hottest experts replicated first",
        warm_start=1)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    phy, gpu, rank = (np.stack(a) for a in zip(*(greedy_layer(problem.load_LE[l], problem.num_slots,
                                                               problem.topology.num_gpus)
                                                  for l in range(problem.num_layers))))
    return problem.placement(gpu, phy, problem.report("greedy", start), order_LX=rank)
