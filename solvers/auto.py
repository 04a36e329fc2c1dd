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
reported with a valid lower bound: the best of CP-SAT's and the relaxations' (``bounds.lower_bound``).
Work is counted in elementary updates and derived from ``--time-limit`` with a calibration
(``WORK_PER_SECOND``), so the same inputs and seed give the same placement; a wall-clock deadline on top
(``SEARCH_END`` of the limit, minus what finishing will take) ends every step on a machine too slow for
the budget, and the placement then says so (``extra["stopped_by_wall_clock"]``).

In ``ep`` mode (and for load-only statistics) the objective is a sum of independent layers, and steps 2-5
run layer by layer, each layer with its own share of the budget and seeds derived from (seed, layer): the
result does not depend on the order of the layers, so ``--threads N`` searches N layers at once in worker
processes and returns the serial result. ``extra["phase_end_s"]`` records when each step ended (seconds
since the start).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from placer.core.placement import Placement
from solvers import exact
from solvers.assignment import Outcome, finish, terms
from solvers.bounds import ep_layer_bound, keep_layer_bounds, layer_bounds
from solvers.common import SEARCH_END, WALL_SAFETY, WallGuard, assign_to_gpus, best_start, finish_seconds
from solvers.cpsat import build_seconds, model_size, run_cpsat, run_cpsat_robust
from solvers.instance import Instance, build_instance, sort_copies
from solvers.localsearch import improve, layer_value
from solvers.problem import PlacementProblem, SolveOptions
from solvers.registry import solver
from solvers.robust import solve_robust

# Local-search work units (elementary updates) per second of --time-limit, calibrated on the project's
# 2-core reference machine under load (docs/solvers.md). The nominal budget is WORK_SHARE of the limit: the
# rest is for building the instance, the start, the bound and finishing, and a margin for a loaded machine.
WORK_PER_SECOND = 2e7
WORK_SHARE = 0.7
# The wall-clock deadline of the searches: solvers/common.py's SEARCH_END of the limit, less what finishing
# is expected to take (``finish_seconds``); the solve then ends within the limit plus 10 % (docs/solvers.md).
# A local-search call does at most 1/LS_CHUNKS of the budget (ep: 1/LAYER_CHUNKS of a layer's) between two
# looks at the clock.
LS_CHUNKS = 40
LAYER_CHUNKS = 4
# A CP-SAT model whose build (``cpsat.build_seconds``) would take more than half its nominal time, or more
# than the wall clock leaves, is not built.
# CP-SAT is tried on models up to this many boolean variables (per layer in ep mode).
CPSAT_MAX_VARIABLES = 60_000
# Share of the work budget for the first local search (the rest: iterated local search), or, where
# CP-SAT follows, the share before it (CP-SAT then gets the rest of the time limit as deterministic time).
FIRST_SEARCH_SHARE = 0.4
SEARCH_SHARE_BEFORE_CPSAT = 0.2
# Work counted for the Python side of one iterated-local-search round (perturbation, evaluation).
ROUND_OVERHEAD = 200_000


def assignment_sweep(inst: Instance, gpu_LP: np.ndarray, wall: WallGuard | None = None) -> tuple[np.ndarray, int]:
    """coherent: for each layer in turn, the best assignment of its items to GPUs given its neighbours
    (capacity s per GPU; linear sum assignment over slots), kept if the objective improves within the cap.
    Returns the assignment and the number of layers changed (stops early if ``wall`` fires)."""
    gpu = gpu_LP.copy()
    L, P, G, s = inst.L, inst.P, inst.G, inst.s
    node = inst.node_of_gpu
    changed = 0
    cur = terms(inst, gpu).value
    for l in range(L):
        if wall is not None and wall.over():
            break
        keep_GP = np.zeros((P, G))
        if l > 0:
            keep_GP += inst.trans_LPP[l - 1].T @ np.eye(G)[gpu[l - 1]]
        if l + 1 < L:
            keep_GP += inst.trans_LPP[l] @ np.eye(G)[gpu[l + 1]]
        nodes_PN = keep_GP @ np.eye(inst.N)[node]
        gain = inst.c_gpu * keep_GP + inst.c_node * nodes_PN[:, node]       # [P, G]
        row = assign_to_gpus(gain, s)
        if row is None:
            continue
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


@dataclass(frozen=True)
class Budget:
    """What one search gets: work units (nominal, reproducible) and the wall-clock stops on top.

    first: work for the first local search; total: work in all (first + iterated local search).
    cpsat_s: nominal CP-SAT seconds (0: no CP-SAT). chunk: work of one local-search call between looks at the
    clock. deadline: ``time.monotonic()`` value at which every search stops. ep: the layers run in waves of
    ``threads`` from ``begin`` (a ``time.monotonic()`` value), each wave ``slice_s`` seconds of wall clock; a
    layer stops at its wave's end (or a quarter slice after it starts, if its wave is late), and never after
    the deadline. seed: the solve's seed. options: the CP-SAT options (ep: one worker).
    """

    first: float
    total: float
    cpsat_s: float
    chunk: float
    deadline: float
    slice_s: float
    seed: int
    options: SolveOptions
    begin: float = 0.0
    threads: int = 1


def cpsat_fits(inst: Instance, layers: list[int]) -> bool:
    """The CP-SAT model of ``layers`` has at most CPSAT_MAX_VARIABLES boolean variables (judged first by a
    cheap count: its placement variables, and in ep mode with top-k > 2 one indicator per token type and GPU)."""
    n = len(layers) * inst.P * inst.G
    if inst.traffic and inst.mode.decomposes_by_layer and inst.K > 2:
        n += sum(inst.types_L[l].items_XK.shape[0] for l in layers) * inst.G
    return n <= CPSAT_MAX_VARIABLES and model_size(inst, layers) <= CPSAT_MAX_VARIABLES


def _cpsat_time(inst: Instance, layers: list[int], nominal_s: float, wall: WallGuard) -> tuple[float, str | None]:
    """CP-SAT's nominal seconds for ``layers`` within what the wall clock leaves after building its model
    (estimated from its size), or 0 and why not."""
    build_s = build_seconds(inst, layers)
    if build_s > 0.5 * nominal_s:
        return 0.0, "its model would take more than half its time to build"
    left = wall.left() - build_s
    if left <= 0.05:
        wall.fired = True
        return 0.0, "the wall clock leaves no time to build its model"
    return min(nominal_s, left / WALL_SAFETY), None


def _local_search(inst: Instance, gpu: np.ndarray, budget: float, chunk: float, seed: int,
                  layers: list[int] | None, wall: WallGuard) -> tuple[np.ndarray, float]:
    """Local search in calls of at most ``chunk`` work, until ``budget``, a call that changes nothing, or the
    wall clock."""
    work = 0.0
    k = 0
    while work < budget and not wall.over():
        # (the pairwise surrogate on the first call only: its pair weights cost more than a call on large layers)
        gpu2, w = improve(inst, gpu, max(min(chunk, budget - work), 1.0), seed + 104729 * k, layers, pair_first=k == 0)
        work += w
        k += 1
        same = np.array_equal(gpu2, gpu)
        gpu = gpu2
        if same:
            break
    return gpu, work


def search_layer(inst: Instance, l: int, gpu_LP: np.ndarray, b: Budget,
                 parts: np.ndarray | None = None) -> dict[str, Any]:
    """ep (or balance only): layer l's search, steps 2-5, from ``gpu_LP[l]``, on its own budget and seeds
    derived from (seed, l) only, so that layers can be searched in any order or at once."""
    now = time.monotonic()
    wave_end = b.begin + (l // b.threads + 1) * b.slice_s
    wall = WallGuard.until(min(b.deadline, max(wave_end, now + 0.25 * b.slice_s)))
    out: dict[str, Any] = {"proven": False, "rounds": 0, "kept": 0, "work": 0.0, "cpsat": None}
    # The layer's lower bound first (the relaxations; only the cheap one once the deadline has passed).
    out["cheap_bound"] = now >= b.deadline
    out["bound"] = ep_layer_bound(inst, l, cheap=out["cheap_bound"])
    # Step 2: exact, the best of every partition of the layer (if the clock allows).
    if parts is not None and not wall.over():
        out.update(row=exact.best_partition(inst, l, parts), proven=True, wall=False)
        return out
    # Step 3: local search.
    seed = b.seed + 7919 * l
    gpu, work = _local_search(inst, gpu_LP, b.first, b.chunk, seed, [l], wall)
    # Step 4: CP-SAT on the layer, warm-started from the local search.
    if b.cpsat_s > 0 and not wall.over():
        time_s, why = _cpsat_time(inst, [l], b.cpsat_s, wall)
        if time_s > 0:
            res = run_cpsat(inst, gpu, b.options, time_s, layers=[l])
            if layer_value(inst, l, res.gpu_LP[l]) <= layer_value(inst, l, gpu[l]) + 1e-9:
                gpu = res.gpu_LP
            out["proven"] = bool(res.proven)
            out["cpsat"] = res.extra["cpsat"]
        else:
            out["cpsat"] = {"skipped": why}
    # Step 5: iterated local search with the work left.
    rng = np.random.default_rng([b.seed, l])
    cur = layer_value(inst, l, gpu[l]) if inst.traffic and work < b.total and not wall.over() else 0.0
    while not out["proven"] and inst.traffic and work < b.total and not wall.over():
        trial = perturb(inst, gpu, l, swaps=max(2, inst.P // 50), rng=rng)
        # (without the pairwise surrogate, whose pair weights cost more than a round on large layers)
        trial, w = improve(inst, trial, max(1.0, min(b.total - work, b.total / 20)), seed + out["rounds"] + 1, [l],
                           pair_first=False)
        work += w + ROUND_OVERHEAD
        out["rounds"] += 1
        v = layer_value(inst, l, trial[l])
        if v < cur - 1e-9:
            gpu, cur = trial, v
            out["kept"] += 1
    out.update(row=gpu[l], work=work, wall=wall.fired)
    return out


# The instance, start and budget the worker processes of a parallel ep search read (inherited by fork).
_SHARED: tuple | None = None


def _layer_task(l: int) -> dict[str, Any]:
    inst, gpu, b, parts = _SHARED
    return search_layer(inst, l, gpu, b, parts)


def search_layers(inst: Instance, gpu: np.ndarray, b: Budget, parts: np.ndarray | None,
                  threads: int) -> list[dict[str, Any]]:
    """Every layer's ``search_layer``, in this process or in ``threads`` forked worker processes (the same
    results: each layer's search depends on its layer, budget and seed only)."""
    global _SHARED
    if threads <= 1 or inst.L == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [search_layer(inst, l, gpu, b, parts) for l in range(inst.L)]
    _SHARED = (inst, gpu, b, parts)
    try:
        with multiprocessing.get_context("fork").Pool(min(threads, inst.L)) as pool:
            return pool.map(_layer_task, range(inst.L), chunksize=1)
    finally:
        _SHARED = None


def _solve_by_layer(inst: Instance, gpu: np.ndarray, options: SolveOptions, deadline: float,
                    extra: dict[str, Any]) -> tuple[np.ndarray, bool, float | None, float]:
    """ep / balance only: steps 2-5 layer by layer. Returns the assignment, whether every layer is proven
    optimal, a bound (the sum of the proven layers' values and the others' relaxation bounds), the work."""
    T = options.time_limit_s
    threads = max(options.threads, 1)
    wall = WallGuard.until(deadline)
    parts = None
    method = exact.applicable(inst, T)
    if method == "enumerate":
        try:
            parts = exact.partitions(inst.P, inst.G, wall)
        except exact.Stopped:
            extra["exact_stopped_by_wall_clock"] = True
    use_cpsat = parts is None and inst.traffic and all(cpsat_fits(inst, [l]) for l in range(inst.L))
    work_total = WORK_PER_SECOND * T * WORK_SHARE
    per_layer = work_total / inst.L
    cpsat_s = (1 - SEARCH_SHARE_BEFORE_CPSAT) * WORK_SHARE * T / inst.L if use_cpsat else 0.0
    layers_at_once = min(threads, inst.L)
    b = Budget(first=(SEARCH_SHARE_BEFORE_CPSAT if use_cpsat else FIRST_SEARCH_SHARE) * per_layer,
               total=per_layer, cpsat_s=cpsat_s, chunk=per_layer / LAYER_CHUNKS, deadline=deadline,
               slice_s=wall.left() * layers_at_once / inst.L, seed=options.seed,
               options=dataclasses.replace(options, threads=1), begin=time.monotonic(), threads=layers_at_once)
    results = search_layers(inst, gpu, b, parts, threads)
    gpu = np.stack([r["row"] for r in results])
    proven = [bool(r["proven"]) for r in results]
    layer_lb, _ = keep_layer_bounds(inst, np.stack([r["bound"] for r in results]))
    bound = None
    if any(proven):
        bound = float(sum(layer_value(inst, l, gpu[l]) if proven[l] else layer_lb[l] for l in range(inst.L)))
    extra["by_layer"] = {
        "threads": layers_at_once, "proven_layers": int(sum(proven)),
        "exact_layers": inst.L if parts is not None else 0,
        "iterated_local_search_rounds": int(sum(r["rounds"] for r in results)),
        "kept": int(sum(r["kept"] for r in results)),
        "layers_stopped_by_wall_clock": int(sum(r["wall"] for r in results)),
        "layers_with_cheap_bound": int(sum(r["cheap_bound"] for r in results)),
    }
    cp = [r["cpsat"] for r in results if r["cpsat"]]
    if cp:
        statuses: dict[str, int] = {}
        for c in cp:
            for k, v in c.get("statuses", {"skipped": 1}).items():
                statuses[k] = statuses.get(k, 0) + v
        extra["cpsat"] = {"statuses": statuses, "blocks": len(cp),
                          "stopped_by_wall_clock": any(c.get("stopped_by_wall_clock", False) for c in cp)}
    fired = any(r["wall"] for r in results) or extra.get("exact_stopped_by_wall_clock", False)
    extra["stopped_by_wall_clock"] = bool(fired)
    return gpu, all(proven), bound, float(sum(r["work"] for r in results))


def _solve_whole(inst: Instance, gpu: np.ndarray, options: SolveOptions, deadline: float,
                 extra: dict[str, Any], phases: dict[str, float], start: float) -> tuple[np.ndarray, bool, float | None, float]:
    """coherent: steps 3-5 on the whole model (adjacent layers are coupled)."""
    T = options.time_limit_s
    wall = WallGuard.until(deadline)
    rng = np.random.default_rng(options.seed)
    use_cpsat = inst.traffic and cpsat_fits(inst, list(range(inst.L)))
    work_total = WORK_PER_SECOND * T * WORK_SHARE
    chunk = work_total / LS_CHUNKS
    first = (SEARCH_SHARE_BEFORE_CPSAT if use_cpsat else FIRST_SEARCH_SHARE) * work_total

    # Step 3: local search alternating with layer-by-layer assignment.
    gpu, work = _local_search(inst, gpu, first, chunk, options.seed, None, wall)
    sweeps = 0
    if inst.L > 1:
        while work < first and not wall.over():
            gpu2, changed = assignment_sweep(inst, gpu, wall)
            work += inst.L * inst.P ** 2 * 4
            sweeps += 1
            if not changed:
                break
            gpu, w = _local_search(inst, gpu2, max(first - work, 1.0), chunk, options.seed + sweeps, None, wall)
            work += w
    value_ls = terms(inst, gpu).value
    extra["local_search"] = {"objective": value_ls, "assignment_sweeps": sweeps}
    phases["local_search"] = round(time.perf_counter() - start, 3)

    # Step 4: CP-SAT on the whole model when it fits in the time left, warm-started from the local search.
    proven, bound = False, None
    if use_cpsat and not wall.over():
        time_s, why = _cpsat_time(inst, list(range(inst.L)), (1 - SEARCH_SHARE_BEFORE_CPSAT) * WORK_SHARE * T, wall)
        if time_s > 0:
            out = run_cpsat(inst, gpu, options, time_s)
            if terms(inst, out.gpu_LP).value <= value_ls + 1e-9:
                gpu = out.gpu_LP
            proven, bound = out.proven, out.bound
            extra.update(out.extra)
            phases["cpsat"] = round(time.perf_counter() - start, 3)
        else:
            extra["cpsat"] = {"skipped": why}
            use_cpsat = False

    # Step 5: iterated local search with the work left.
    rounds = kept = 0
    if not use_cpsat and inst.traffic:
        cur = terms(inst, gpu).value
        while work < work_total and not wall.over():
            layer = int(rng.integers(inst.L))
            trial = perturb(inst, gpu, layer, swaps=max(2, inst.P // 50), rng=rng)
            trial, w = improve(inst, trial, max(1.0, min(work_total - work, chunk)), options.seed + rounds)
            work += w + ROUND_OVERHEAD
            rounds += 1
            v = terms(inst, trial).value
            if v < cur - 1e-9:
                gpu, cur = trial, v
                kept += 1
    extra["iterated_local_search"] = {"rounds": rounds, "kept": kept}
    if rounds:
        phases["iterated_local_search"] = round(time.perf_counter() - start, 3)
    extra["stopped_by_wall_clock"] = bool(wall.fired or extra.get("cpsat", {}).get("stopped_by_wall_clock", False))
    return gpu, proven, bound, work


@solver("auto", summary="the default: exact where the structure allows, local search and CP-SAT with a bound otherwise",
        params=("balance_weight", "intra_weight", "inter_weight", "max_imbalance"), token_paths=True,
        robust=lambda scn, options: solve_robust(scn, options, "auto", cpsat=run_cpsat_robust), compiled=True)
def solve(problem: PlacementProblem, options: SolveOptions) -> Placement:
    start = time.perf_counter()
    t0 = time.monotonic()
    T = options.time_limit_s
    inst = build_instance(problem, options)

    # Step 1: the best feasible start, and the bound (kept for the report).
    start_name, gpu, value = best_start(inst, problem)
    extra: dict[str, Any] = {"start": {"solver": start_name, "objective": value}}
    finish_s = finish_seconds(inst, problem, gpu)
    if not inst.decomposes:
        layer_bounds(inst)  # ep: each layer's bound comes with its search
    phases = extra["phase_end_s"] = {"start": round(time.perf_counter() - start, 3)}
    deadline = t0 + SEARCH_END * T - finish_s
    wall = WallGuard.until(deadline)

    # Step 2 (coherent): exact by structure, within the time left.
    if not inst.decomposes:
        out = exact.solve(inst, T, wall)
        if out is not None:
            phases["exact"] = round(time.perf_counter() - start, 3)
            out.extra.update(extra)
            return finish(inst, out, "auto", start)
        if wall.fired:
            extra["exact_stopped_by_wall_clock"] = True

    # Steps 2-5: layer by layer (ep, balance only), or on the whole model (coherent). Budgets are nominal
    # (work units, deterministic time), so that results are reproducible; the wall clock stops them on a
    # machine too slow for them.
    if inst.decomposes:
        gpu, proven, bound, work = _solve_by_layer(inst, gpu, options, deadline, extra)
        phases["by_layer"] = round(time.perf_counter() - start, 3)
    else:
        gpu, proven, bound, work = _solve_whole(inst, gpu, options, deadline, extra, phases, start)
    extra["work"] = int(work)
    return finish(inst, Outcome(gpu, proven=proven, bound=bound, extra=extra), "auto", start)
