"""``round_robin``: vLLM's round-robin expert placement: expert e on GPU e mod G.

Redundant slots (if any) hold experts 0, 1, 2, ... again (as ``contiguous`` does); each copy goes to the
first GPU after its expert's GPU (cyclically) that has a free slot and does not hold that expert yet, so a
copy never sits beside its original when another GPU has room. Load-agnostic: a pure function of the shape.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver


def round_robin_gpus(num_experts: int, num_slots: int, num_gpus: int) -> tuple[np.ndarray, np.ndarray]:
    """One layer's items (experts 0..E-1, then the redundant copies) as ([P] GPU of each item, [P] expert of each
    item), with expert e on GPU e mod G and each copy on the first GPU after its expert's with room."""
    spg = num_slots // num_gpus
    expert = np.arange(num_slots) % num_experts
    gpu = np.empty(num_slots, dtype=np.int64)
    gpu[:num_experts] = np.arange(num_experts) % num_gpus
    held: list[set[int]] = [set(np.nonzero(gpu[:num_experts] == g)[0].tolist()) for g in range(num_gpus)]
    filled = np.bincount(gpu[:num_experts], minlength=num_gpus)
    for item in range(num_experts, num_slots):
        e = int(expert[item])
        order = [(e % num_gpus + i) % num_gpus for i in range(1, num_gpus + 1)]
        room = [g for g in order if filled[g] < spg]
        g = next((g for g in room if e not in held[g]), room[0])
        gpu[item] = g
        held[g].add(e)
        filled[g] += 1
    return gpu, expert


@solver("round_robin", summary="vLLM's round-robin layout: expert e on GPU e mod G", warm_start=4)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    gpu, expert = round_robin_gpus(problem.num_experts, problem.num_slots, problem.topology.num_gpus)
    L = problem.num_layers
    return problem.placement(np.tile(gpu, (L, 1)), np.tile(expert, (L, 1)), problem.report("round_robin", start))
