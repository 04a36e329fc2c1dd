"""``auto`` (the default solver): exact where the structure allows, a decomposition that scales otherwise.

1. Start from the best feasible baseline (LPT packing of items, greedy, eplb, contiguous, round_robin: the
   one with the lowest objective within the cap).
2. Exact by structure (one node, no copies; ``solvers/exact.py``): ``ep`` enumerates every layer's
   partitions; ``coherent`` solves the chain of layers by dynamic programming over partitions, or by one
   max-weight assignment per pair of layers with one expert per GPU. Proven optimal; done.
3. Otherwise improve the start by swap local search with exact move costs (``solvers/localsearch.py``); in
   ``coherent`` mode alternate it with layer-by-layer capacitated assignment given the neighbouring
   layers (each layer's best assignment to GPUs for the transitions to its fixed neighbours, solved
   exactly by OR-Tools' linear sum assignment, kept when it improves the objective within the cap).
4. If the CP-SAT model fits (per layer in ``ep`` mode, whole in ``coherent`` mode), hand it the local-search
   result as warm start with the remaining time: it may prove optimality and always tightens the bound.
5. With time left, iterated local search: a few random swaps in one layer, local search again, kept only
   if better.

Always feasible, never worse than the start (every step keeps the incumbent unless it improves), and
reported with a valid lower bound: the best of CP-SAT's and the min-cost-flow relaxation's
(``bounds.lower_bound``). Work is counted in elementary updates and derived from ``--time-limit`` with
a calibration (``WORK_PER_SECOND``), so the same inputs and seed give the same placement.
``extra["phase_end_s"]`` records when each step ended (seconds since the start).
"""

from __future__ import annotations

import time

import numpy as np
from ortools.graph.python import linear_sum_assignment

from placer.core.placement import Placement
from solvers import exact
from solvers.assignment import Outcome, finish, terms
from solvers.common import WALL_SAFETY, WallGuard, best_start
from solvers.cpsat import model_size, run_cpsat
from solvers.instance import Instance, build_instance, sort_copies
from solvers.localsearch import improve, layer_value
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver
from solvers.robust import solve_robust

# Local-search work units (elementary updates) per second of --time-limit, calibrated on the project's
# 2-core reference machine under load (docs/solvers.md).
WORK_PER_SECOND = 2e7
# CP-SAT is tried on models up to this many boolean variables (per layer in ep mode).
CPSAT_MAX_VARIABLES = 60_000
# Share of the work budget for the first local search (the rest: iterated local search), or, where
# CP-SAT follows, the share before it (CP-SAT then gets the rest of the time limit as deterministic time).
FIRST_SEARCH_SHARE = 0.4
SEARCH_SHARE_BEFORE_CPSAT = 0.2
# Work counted for the Python side of one iterated-local-search round (perturbation, evaluation).
ROUND_OVERHEAD = 200_000


def assignment_sweep(inst: Instance, gpu_LP: np.ndarray) -> tuple[np.ndarray, int]:
    """coherent: for each layer in turn, the best assignment of its items to GPUs given its neighbours
    (capacity s per GPU; linear sum assignment over slots), kept if the objective improves within the cap.
    Returns the assignment and the number of layers changed."""
    gpu = gpu_LP.copy()
    L, P, G, s = inst.L, inst.P, inst.G, inst.s
    node = inst.node_of_gpu
    changed = 0
    cur = terms(inst, gpu).value
    for l in range(L):
        keep_GP = np.zeros((P, G))
        if l > 0:
            keep_GP += inst.trans_LPP[l - 1].T @ np.eye(G)[gpu[l - 1]]
        if l + 1 < L:
            keep_GP += inst.trans_LPP[l] @ np.eye(G)[gpu[l + 1]]
        nodes_PN = keep_GP @ np.eye(inst.N)[node]
        gain = inst.c_gpu * keep_GP + inst.c_node * nodes_PN[:, node]       # [P, G]
        gain_slots = np.repeat(gain, s, axis=1)                             # slot k on GPU k // s
        scale = 1000.0
        a = linear_sum_assignment.SimpleLinearSumAssignment()
        ii, kk = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
        a.add_arcs_with_cost(ii.ravel(), kk.ravel(), (-np.round(gain_slots * scale)).astype(np.int64).ravel())
        if a.solve() != a.OPTIMAL:
            continue
        row = np.array([a.right_mate(i) for i in range(P)]) // s
        row = sort_copies(row, inst.item_expert_LP[l])
        if np.array_equal(row, gpu[l]):
            continue
        loads = np.bincount(row, weights=inst.load_LP[l], minlength=G)
        if loads.max() > inst.cap_L[l] * (1 + 1e-12):
            continue
        trial = gpu.copy()
        trial[l] = row
        if not inst.order_ok(trial):  # two copies of an expert on one GPU
            continue
        v = terms(inst, trial).value
        if v < cur - 1e-9:
            gpu, cur = trial, v
            changed += 1
    return gpu, changed


def perturb(inst: Instance, gpu_LP: np.ndarray, layer: int, swaps: int, rng: np.random.Generator) -> np.ndarray:
    """``swaps`` random swaps in one layer that keep the copy order (copies on different GPUs) and the cap."""
    gpu = gpu_LP.copy()
    row = gpu[layer]
    prev, nxt = inst.prev_next_LP()
    w = inst.load_LP[layer]
    loads = np.bincount(row, weights=w, minlength=inst.G)
    done = tries = 0
    while done < swaps and tries < 50 * swaps:
        tries += 1
        i, j = (int(v) for v in rng.integers(0, inst.P, size=2))
        g1, g2 = row[i], row[j]
        if g1 == g2:
            continue
        trial = row.copy()
        trial[i], trial[j] = g2, g1
        p, n = prev[layer], nxt[layer]
        step = inst.copy_step
        if any(p[k] >= 0 and trial[p[k]] + step > trial[k] or n[k] >= 0 and trial[n[k]] < trial[k] + step
               for k in (i, j)):
            continue
        l1, l2 = loads[g1] - w[i] + w[j], loads[g2] - w[j] + w[i]
        if max(l1, l2) > inst.cap_L[layer] * (1 + 1e-12):
            continue
        row[:] = trial
        loads[g1], loads[g2] = l1, l2
        done += 1
    return gpu


@solver("auto", summary="the default: exact where the structure allows, local search and CP-SAT with a bound otherwise",
        params=("balance_weight", "intra_weight", "inter_weight", "max_imbalance"), token_paths=True,
        robust=solve_robust)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    wall = WallGuard(options.time_limit_s * WALL_SAFETY)
    inst = build_instance(problem, options)
    rng = np.random.default_rng(options.seed)

    # Step 1: the best feasible start.
    start_name, gpu, value = best_start(inst, problem)
    extra = {"start": {"solver": start_name, "objective": value}}
    phases = extra["phase_end_s"] = {"start": round(time.perf_counter() - start, 3)}

    # Step 2: exact by structure.
    if exact.applicable(inst) is not None:
        out = exact.solve(inst)
        if out is not None:
            phases["exact"] = round(time.perf_counter() - start, 3)
            out.extra.update(extra)
            return finish(inst, out, "auto", start)

    # Step 3: local search (coherent: alternating with layer-by-layer assignment). Budgets are nominal
    # (work units, deterministic time), not wall-clock, so that results are reproducible.
    size = max(model_size(inst, [l]) for l in range(inst.L)) if inst.decomposes \
        else model_size(inst, list(range(inst.L)))
    use_cpsat = inst.traffic and size <= CPSAT_MAX_VARIABLES
    work_total = WORK_PER_SECOND * options.time_limit_s
    first = (SEARCH_SHARE_BEFORE_CPSAT if use_cpsat else FIRST_SEARCH_SHARE) * work_total
    gpu, work = improve(inst, gpu, first, options.seed)
    sweeps = 0
    if not inst.decomposes and inst.L > 1:
        while work < first and not wall.over():
            gpu2, changed = assignment_sweep(inst, gpu)
            work += inst.L * inst.P ** 2 * 4
            sweeps += 1
            if not changed:
                break
            gpu, w = improve(inst, gpu2, max(first - work, 1.0), options.seed + sweeps)
            work += w
    value_ls = terms(inst, gpu).value
    extra["local_search"] = {"objective": value_ls, "assignment_sweeps": sweeps}
    phases["local_search"] = round(time.perf_counter() - start, 3)

    # Step 4: CP-SAT on the whole model when it fits, warm-started from the local search.
    proven, bound = False, None
    if use_cpsat:
        out = run_cpsat(inst, gpu, options, (1 - SEARCH_SHARE_BEFORE_CPSAT) * options.time_limit_s)
        if terms(inst, out.gpu_LP).value <= value_ls + 1e-9:
            gpu = out.gpu_LP
        proven, bound = out.proven, out.bound
        extra.update(out.extra)
        phases["cpsat"] = round(time.perf_counter() - start, 3)

    # Step 5: iterated local search with the work left (ep: one layer at a time, layers are independent).
    rounds = kept = 0
    if not use_cpsat and inst.traffic:
        cur = terms(inst, gpu).value
        while work < work_total and not wall.over():
            layer = int(rng.integers(inst.L))
            trial = perturb(inst, gpu, layer, swaps=max(2, inst.P // 50), rng=rng)
            one = [layer] if inst.decomposes else None
            trial, w = improve(inst, trial, max(1.0, min(work_total - work, work_total / 20)),
                               options.seed + rounds, one)
            work += w + ROUND_OVERHEAD
            rounds += 1
            if inst.decomposes:
                better = layer_value(inst, layer, trial[layer]) < layer_value(inst, layer, gpu[layer]) - 1e-9
            else:
                v = terms(inst, trial).value
                better = v < cur - 1e-9
                cur = v if better else cur
            if better:
                gpu = trial
                kept += 1
    extra["iterated_local_search"] = {"rounds": rounds, "kept": kept}
    if rounds:
        phases["iterated_local_search"] = round(time.perf_counter() - start, 3)
    extra["stopped_by_wall_clock"] = wall.fired
    extra["work"] = int(work)
    return finish(inst, Outcome(gpu, proven=proven, bound=bound, extra=extra), "auto", start)
