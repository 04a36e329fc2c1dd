"""``random``: a seeded random placement, a floor any real solver must beat.

Each layer's slots hold experts 0..E-1 and redundant copies of experts 0, 1, 2, ... (as ``contiguous``),
shuffled by an independent permutation per layer drawn from ``SolveOptions.seed``.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.layout import placement_from_rows
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import register


@register("random")
def solve(problem: PlacementProblem, options: SolveOptions = SolveOptions()) -> Placement:
    start = time.perf_counter()
    rng = np.random.default_rng(options.seed)
    items = np.arange(problem.num_slots) % problem.num_experts
    rows = [rng.permutation(items) for _ in range(problem.num_layers)]
    return placement_from_rows(problem, rows, "random", start, extra={"seed": options.seed})
