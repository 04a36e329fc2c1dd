"""``random``: a seeded random placement, a floor any real solver must beat.

Each layer's slots hold experts 0..E-1 and redundant copies of experts 0, 1, 2, ... (as ``contiguous``),
shuffled by an independent permutation per layer drawn from ``SolveOptions.seed``. Where the shuffle puts two
copies of one expert on one GPU (a wasted slot), the layer is dealt instead: the experts in the shuffle's order,
each with its copies together, dealt to the GPUs in turn, so copies land on different GPUs.
"""

from __future__ import annotations

import time

import numpy as np

from placer.core.placement import Placement, same_gpu_copies
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver


def _apart(expert_P: np.ndarray, num_gpus: int) -> np.ndarray:
    """``expert_P`` (slots GPU-major) if no GPU holds an expert twice, else its experts dealt to the GPUs in turn
    (in the order of their first slot, copies together): copies on different GPUs while an expert has at most
    ``num_gpus`` of them."""
    if not same_gpu_copies(expert_P[None], num_gpus).any():
        return expert_P
    _, first = np.unique(expert_P, return_index=True)
    experts = expert_P[np.sort(first)]
    grouped = np.repeat(experts, np.bincount(expert_P)[experts])
    P = len(expert_P)
    # item k goes to GPU k mod G, as the (k // G)-th slot of that GPU
    out = np.empty_like(expert_P)
    out[(np.arange(P) % num_gpus) * (P // num_gpus) + np.arange(P) // num_gpus] = grouped
    return out


@solver("random", summary="a seeded random layout, the floor any real solver must beat")
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    rng = np.random.default_rng(options.seed)
    items = np.arange(problem.num_slots) % problem.num_experts
    expert = np.stack([_apart(rng.permutation(items), problem.topology.num_gpus) for _ in range(problem.num_layers)])
    gpu = np.broadcast_to(np.arange(problem.num_slots) // problem.slots_per_gpu, expert.shape)
    return problem.placement(gpu, expert, problem.report("random", start, extra={"seed": options.seed}))
