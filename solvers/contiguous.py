"""``contiguous``: vLLM's linear layout and Megatron's: GPU g holds experts g*E/G ... (g+1)*E/G - 1.

Redundant slots (if any) repeat experts 0, 1, 2, ... so the layout stays a pure function of the shape.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver


@solver("contiguous", summary="vLLM's and Megatron's linear layout: GPU g holds experts g*E/G to (g+1)*E/G - 1",
        warm_start=3)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    L, E, P = problem.num_layers, problem.num_experts, problem.num_slots
    slot = np.tile(np.arange(P), (L, 1))
    return problem.placement(slot // problem.slots_per_gpu, slot % E, problem.report("contiguous", start))
