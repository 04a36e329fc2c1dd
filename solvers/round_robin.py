"""``round_robin``: vLLM's round-robin expert placement: expert e on GPU e mod G.

Redundant slots (if any) hold experts 0, 1, 2, ... again (as ``contiguous`` does); each copy goes to the
first GPU after its expert's GPU (cyclically) that has a free slot and does not hold that expert yet, so a
copy never sits beside its original when another GPU has room. Load-agnostic: a pure function of the shape.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.layout import placement_from_rows
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import register


def round_robin_row(num_experts: int, num_slots: int, num_gpus: int) -> np.ndarray:
    """[P] one layer's slots (GPU-major) with expert e on GPU e mod G and redundant copies spread after."""
    spg = num_slots // num_gpus
    per_gpu: list[list[int]] = [[] for _ in range(num_gpus)]
    for e in range(num_experts):
        per_gpu[e % num_gpus].append(e)
    for r in range(num_slots - num_experts):
        e = r % num_experts
        home = e % num_gpus
        order = [(home + i) % num_gpus for i in range(1, num_gpus + 1)]
        room = [g for g in order if len(per_gpu[g]) < spg]
        g = next((g for g in room if e not in per_gpu[g]), room[0])
        per_gpu[g].append(e)
    return np.concatenate([np.array(x, dtype=np.int64) for x in per_gpu])


@register("round_robin")
def solve(problem: PlacementProblem, options: SolveOptions = SolveOptions()) -> Placement:
    start = time.perf_counter()
    row = round_robin_row(problem.num_experts, problem.num_slots, problem.topology.num_gpus)
    return placement_from_rows(problem, np.tile(row, (problem.num_layers, 1)), "round_robin", start)
