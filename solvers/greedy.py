"""``greedy``: longest-processing-time balance of expert load, per layer.

1. With redundant slots, replicate the hottest experts first (one extra copy at a time to the expert with
   the largest load per replica, as EPLB does); a replica carries load / copies (the even split of the
   replica rule).
2. Take the replicas in decreasing load and put each on the least-loaded GPU that has a free slot (ties:
   the lower GPU), preferring GPUs that do not hold a copy of the same expert yet.

Uses expert load only; the classic 4/3-approximation of the largest GPU load when every GPU can take any
number of experts, here with P / G slots per GPU.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.layout import pack_balanced, placement_from_rows, replicate_hottest
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import register


def greedy_row(load_E: np.ndarray, num_slots: int, num_gpus: int) -> np.ndarray:
    """[P] one layer's slots (GPU-major) from its expert load."""
    spg = num_slots // num_gpus
    # Step 1: replicate the hottest experts.
    phy, cnt = replicate_hottest(load_E, num_slots)
    # Step 2: pack replicas in decreasing load to the least-loaded GPU with room.
    gpu, rank = pack_balanced(load_E[phy] / cnt[phy], num_gpus, spg, label_N=phy)
    row = np.empty(num_slots, dtype=np.int64)
    row[gpu * spg + rank] = phy
    return row


@register("greedy")
def solve(problem: PlacementProblem, options: SolveOptions = SolveOptions()) -> Placement:
    start = time.perf_counter()
    rows = [greedy_row(problem.load_LE[l], problem.num_slots, problem.topology.num_gpus)
            for l in range(problem.num_layers)]
    return placement_from_rows(problem, rows, "greedy", start)
