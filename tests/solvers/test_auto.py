"""auto and cpsat on instances too large to enumerate: planted structure recovered, never worse than the start,
valid bounds, time limits, determinism, redundant copies."""

from __future__ import annotations

import numpy as np
import pytest

from placer.core.cost import evaluate_trace
from solvers.instance import build_instance
from solvers.assignment import feasible, gpu_from_placement, terms
from solvers.bounds import lower_bound
from solvers.problem import SolveOptions
from solvers.registry import get_solver
from tests.solvers.helpers import problem_of, trace

TRAFFIC_FIRST = {"balance_weight": 0.01, "max_imbalance": 0}


def saved(inst, gpu) -> float:
    """Locality: ep: dispatches saved by co-locating a token's experts (K x token-layers - distinct GPUs);
    coherent: transitions kept on one GPU (all - pair hops)."""
    t = terms(inst, gpu)
    if inst.mode == "ep":
        total = sum(float(ty.count_X.sum()) * ty.items_XK.shape[1] for ty in inst.types_L)
    else:
        total = float(inst.trans_LPP.sum())
    return total - float(t.gpus_L.sum())


@pytest.mark.parametrize("mode", ["ep", "coherent"])
@pytest.mark.parametrize("solver", ["auto", "cpsat"])
def test_planted_clusters_are_recovered(mode, solver):
    """Synthetic routing with G planted clusters (each a group of experts that co-activate and chain across
    layers): the solver keeps at least 95 % of the locality of the planted placement (cluster c on GPU c)."""
    meta, b = trace(3, 16, 2, 3000, seed=21, clusters=4, affinity=0.9, zipf=0.3)
    problem = problem_of(b, 16, 4, 1, 0, mode)
    inst = build_instance(problem, SolveOptions(params=TRAFFIC_FIRST))
    planted = np.array(meta.extra["planted"]["cluster_LE"], dtype=np.int64)
    p = get_solver(solver)(problem, SolveOptions(time_limit_s=4, params=TRAFFIC_FIRST))
    got = saved(inst, gpu_from_placement(inst, p))
    assert got >= 0.95 * saved(inst, planted), (got, saved(inst, planted))


@pytest.mark.parametrize("mode,nodes,redundant", [("ep", 2, 0), ("coherent", 1, 4), ("ep", 1, 8)])
def test_auto_never_worse_than_its_start_and_bounds_hold(mode, nodes, redundant):
    _, b = trace(3, 16, 3, 2000, seed=22, clusters=4)
    problem = problem_of(b, 16, 4, nodes, redundant, mode)
    p = get_solver("auto")(problem, SolveOptions(time_limit_s=3))
    assert p.report.objective_value <= p.report.extra["start"]["objective"] + 1e-6
    assert p.report.bound <= p.report.objective_value + 1e-6 and 0 <= p.report.gap < 1
    inst = build_instance(problem, SolveOptions())
    gpu = gpu_from_placement(inst, p)
    assert gpu is not None and feasible(inst, gpu)
    # Every expert placed, copies by EPLB's rule, every GPU full; the objective is what evaluate measures.
    assert np.array_equal(p.logcnt_LE, inst.cnt_LE) and p.num_slots == 16 + redundant
    r = evaluate_trace(b, p, problem.topology, mode)
    assert p.report.objective.measure(r) == pytest.approx(p.report.objective_value, rel=1e-9)
    # Start from a baseline never beats the solver.
    for name in ("greedy", "contiguous"):
        base = get_solver(name)(problem)
        g = gpu_from_placement(inst, base)
        if g is not None and feasible(inst, g):
            assert terms(inst, g).value >= p.report.objective_value - 1e-6


@pytest.mark.parametrize("solver", ["auto", "cpsat"])
def test_a_tiny_time_limit_gives_a_feasible_placement_with_bound_and_gap(solver):
    _, b = trace(6, 16, 2, 3000, seed=23, clusters=4)
    problem = problem_of(b, 16, 4, 2, 0, "coherent")
    p = get_solver(solver)(problem, SolveOptions(time_limit_s=0.05))
    assert p.report.status == "FEASIBLE"
    assert p.report.bound is not None and p.report.bound < p.report.objective_value and p.report.gap > 0
    lb, _ = lower_bound(build_instance(problem, SolveOptions()))
    assert p.report.bound >= lb - 1e-6


def test_auto_is_deterministic_on_a_large_instance(monkeypatch):
    """Too large for CP-SAT: local search and iterated local search run on work budgets, not the clock (the
    budget made half the calibrated one, so that it runs out before the clock on a loaded machine too)."""
    import solvers.auto

    monkeypatch.setattr(solvers.auto, "WORK_PER_SECOND", solvers.auto.WORK_PER_SECOND / 2)
    _, b = trace(4, 64, 4, 4000, seed=24, clusters=16)
    problem = problem_of(b, 64, 16, 2, 0, "coherent")
    a = get_solver("auto")(problem, SolveOptions(time_limit_s=1.5, seed=5))
    c = get_solver("auto")(problem, SolveOptions(time_limit_s=1.5, seed=5))
    assert "cpsat" not in a.report.extra and not a.report.extra["stopped_by_wall_clock"]
    assert a == c and a.report.objective_value == c.report.objective_value
    assert a.report.extra["iterated_local_search"]["rounds"] > 0


def test_auto_ep_large_layers_use_a_sample_and_stay_exact():
    """With more token types than the exact search samples, the result is still judged on every token."""
    from solvers import localsearch

    _, b = trace(2, 64, 6, 6000, seed=25, clusters=16)
    problem = problem_of(b, 64, 16, 4, 16, "ep")
    old = localsearch.SAMPLE_TYPES
    localsearch.SAMPLE_TYPES = 500
    try:
        p = get_solver("auto")(problem, SolveOptions(time_limit_s=1))
    finally:
        localsearch.SAMPLE_TYPES = old
    r = evaluate_trace(b, p, problem.topology, "ep")
    assert p.report.objective.measure(r) == pytest.approx(p.report.objective_value, rel=1e-9)
    assert p.report.objective_value < p.report.extra["start"]["objective"]


def test_load_only_statistics_balance_only():
    """A load matrix (no routing): auto and cpsat balance the load, at least as well as greedy."""
    from placer.core.cost import evaluate_load
    from placer.core.topology import Topology
    from solvers.problem import PlacementProblem

    load = np.random.default_rng(0).integers(1, 1000, size=(4, 64)).astype(float)
    problem = PlacementProblem(load_LE=load, topology=Topology(8))
    greedy = evaluate_load(load, get_solver("greedy")(problem)).max_load_L.sum()
    for name in ("auto", "cpsat"):
        p = get_solver(name)(problem, SolveOptions(time_limit_s=2))
        assert p.report.objective.name.endswith("*max_load") and "+" not in p.report.objective.name
        assert p.report.extra["note"] == "load-only statistics: balance only"
        assert evaluate_load(load, p).max_load_L.sum() <= greedy + 1e-9


def test_statistics_file_input_is_exact_for_top2():
    """Without token paths (a stats file), top-2 ep and coherent objectives are still exact."""
    _, b = trace(3, 16, 2, 2000, seed=26, clusters=4)
    for mode in ("ep", "coherent"):
        problem = problem_of(b, 16, 4, 1, 0, mode, paths=False)
        p = get_solver("auto")(problem, SolveOptions(time_limit_s=2))
        assert not p.report.extra["objective_is_estimate"]
        r = evaluate_trace(b, p, problem.topology, mode)
        assert p.report.objective.measure(r) == pytest.approx(p.report.objective_value, rel=1e-9)


def test_load_only_solves_report_the_balance_bound_and_gap():
    """A load matrix with redundant copies: the objective is the even-split balance, which evaluate --load
    measures, so auto reports the balance lower bound (mean load, heaviest copy with the lightest others) and its
    gap, and the bound is below every placement's objective of those copies."""
    from placer.core.cost import evaluate_load
    from placer.core.topology import Topology
    from solvers.problem import PlacementProblem

    load = np.random.default_rng(3).integers(1, 1000, size=(3, 24)).astype(float)
    problem = PlacementProblem(load_LE=load, topology=Topology(4), num_redundant=4)
    p = get_solver("auto")(problem, SolveOptions(time_limit_s=1))
    r = p.report
    assert r.bound is not None and r.gap is not None and 0 <= r.gap < 1
    assert r.bound <= r.objective_value + 1e-9
    measured = r.objective.measure(evaluate_load(load, p))
    assert measured == pytest.approx(r.objective_value, rel=1e-9)
    # The bound's parts: the mean GPU load and the heaviest copy with the lightest others, per layer.
    inst = build_instance(problem, SolveOptions())
    per_copy = np.sort(inst.load_LP, axis=1)
    mean = inst.load_LP.sum(axis=1) / 4
    heavy = per_copy[:, -1] + per_copy[:, :inst.s - 1].sum(axis=1)
    assert r.bound == pytest.approx(inst.c_bal * np.maximum(mean, heavy).sum())
