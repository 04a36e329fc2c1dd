"""``contiguous``: vLLM's linear layout and Megatron's: GPU g holds experts g*E/G ... (g+1)*E/G - 1.

Redundant slots (if any) repeat experts 0, 1, 2, ... so the layout stays a pure function of the shape.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import register


@register("contiguous")
def solve(problem: PlacementProblem, options: SolveOptions = SolveOptions()) -> Placement:
    start = time.perf_counter()
    L, E, P = problem.num_layers, problem.num_experts, problem.num_slots
    row = np.arange(P) % E
    return Placement(
        phy2log_LP=np.tile(row, (L, 1)),
        num_gpus=problem.topology.num_gpus,
        num_nodes=problem.topology.num_nodes,
        num_experts=E,
        solver="contiguous",
        status="HEURISTIC",
        wall_time_s=time.perf_counter() - start,
        mode=problem.mode,
        source=problem.source,
        model_layer_indices=problem.model_layer_indices,
        topology=problem.topology,
    )
