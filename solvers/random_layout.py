"""``random``: a seeded random placement, a floor any real solver must beat.

Each layer's slots hold experts 0..E-1 and redundant copies of experts 0, 1, 2, ... (as ``contiguous``),
shuffled by an independent permutation per layer drawn from ``SolveOptions.seed``.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver


@solver("random", summary="a seeded random layout, the floor any real solver must beat")
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    rng = np.random.default_rng(options.seed)
    items = np.arange(problem.num_slots) % problem.num_experts
    expert = np.stack([rng.permutation(items) for _ in range(problem.num_layers)])
    gpu = np.broadcast_to(np.arange(problem.num_slots) // problem.slots_per_gpu, expert.shape)
    return problem.placement(gpu, expert, problem.report("random", start, extra={"seed": options.seed}))
