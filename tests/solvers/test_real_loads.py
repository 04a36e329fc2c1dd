"""Real-valued loads (rates, averages) through the solvers: valid placements, objectives that are what evaluate
measures, optima checked against exhaustive search, and no OPTIMAL claimed for a problem CP-SAT only solved
rounded."""

from __future__ import annotations

import numpy as np
import pytest

from placer.core.objective import Quantity
from placer.core.placement import Placement
from placer.core.topology import Topology
from solvers import SOLVER_NAMES, PlacementProblem, SolveOptions, get_solver
from solvers.cpsat import load_scale
from tests.solvers.helpers import labelled_layers


def _rates(L=2, E=8, seed=0):
    """Selection frequencies of a top-2 router: each layer's row sums to 2."""
    return np.random.default_rng(seed).dirichlet(np.ones(E) * 0.7, size=L) * 2.0


def _max_loads(p: Placement, load_LE: np.ndarray) -> np.ndarray:
    return p.gpu_load_LG(load_LE).max(axis=1)


def _brute_force_max_loads(load_LE: np.ndarray, G: int) -> np.ndarray:
    """Each layer's smallest largest-GPU load over every assignment of its experts (no copies)."""
    assign = labelled_layers(load_LE.shape[1], G)                        # [n, E] GPU of each expert
    loads = np.zeros((assign.shape[0], G))
    best = []
    for row in load_LE:
        loads[:] = 0
        np.add.at(loads, (np.arange(assign.shape[0])[:, None], assign), row[None, :])
        best.append(loads.max(axis=1).min())
    return np.array(best)


@pytest.mark.parametrize("redundant", [0, 4])
def test_every_load_only_solver_takes_rates(redundant):
    load = _rates()
    problem = PlacementProblem(load, Topology(4), num_redundant=redundant)
    ran = []
    for name in SOLVER_NAMES:
        try:
            p = get_solver(name)(problem, SolveOptions(time_limit_s=2.0))
        except ValueError:  # solvers that need affinity (exflow) or no copies (moetuner) say so
            continue
        ran.append(name)
        assert p.num_slots == 8 + redundant and p.num_experts == 8, name
        assert (p.logcnt_LE >= 1).all(), name
        r = p.report
        if r.objective is not None and r.objective_value is not None:
            # Load-only: the objective is the balance weight times the sum of the layers' largest GPU loads.
            assert [t.quantity for t in r.objective.terms] == [Quantity.MAX_LOAD], name
            w = r.objective.weight(Quantity.MAX_LOAD)
            assert r.objective_value == pytest.approx(w * _max_loads(p, load).sum(), rel=1e-9), name
    assert {"auto", "cpsat", "greedy", "eplb", "contiguous", "round_robin"} <= set(ran)


def test_optimising_solvers_reach_the_exhaustive_optimum_on_rates():
    load = _rates(seed=3)
    best = _brute_force_max_loads(load, 4)
    for name in ("auto", "cpsat"):
        p = get_solver(name)(PlacementProblem(load, Topology(4)), SolveOptions(time_limit_s=5.0))
        got = _max_loads(p, load)
        # CP-SAT solves loads resolved to a millionth of a layer's load: at most that far from the optimum.
        np.testing.assert_allclose(got, best, rtol=1e-5, err_msg=name)
        if p.report.status == "OPTIMAL":
            np.testing.assert_allclose(got, best, rtol=1e-12, err_msg=name)


def test_cpsat_never_claims_optimal_for_a_rounded_problem():
    """Items of about 0.5, 0.5, 0.5, 0.1, 0.1, 0.1 on two GPUs of three slots: the optimum (about 1.1 on the busier
    GPU) is above every lower bound moeplace computes (the mean, 0.9), so only CP-SAT's own search can prove it.
    Loads with six decimals are solved exactly once scaled by 10^6 (OPTIMAL); loads with more are rounded, and the
    placement then says FEASIBLE, without CP-SAT's bound."""
    exact = np.array([[0.5, 0.5, 0.5, 0.1, 0.1, 0.1]])
    finer = exact + np.arange(6) * 1e-9
    assert load_scale(exact) == load_scale(finer) == 10 ** 6
    solve = get_solver("cpsat")
    p = solve(PlacementProblem(finer, Topology(2)), SolveOptions(time_limit_s=5.0))
    q = solve(PlacementProblem(exact, Topology(2)), SolveOptions(time_limit_s=5.0))
    assert _max_loads(p, finer) == pytest.approx([1.1]) and _max_loads(q, exact) == pytest.approx([1.1])
    assert q.report.status == "OPTIMAL" and q.report.gap == 0.0
    r = p.report
    assert r.status == "FEASIBLE" and r.bound is not None and r.bound < r.objective_value
    assert r.extra["cpsat"]["statuses"] == {"OPTIMAL": 1}  # what CP-SAT said about the rounded model


def test_cpsat_gives_the_same_balance_at_any_scale_of_the_loads():
    """Counts, and the same counts as rates (divided by 10^4): the same GPU loads up to the scale, with copies."""
    counts = np.random.default_rng(7).integers(1, 500, size=(2, 8)).astype(float)
    solve = get_solver("cpsat")
    a = solve(PlacementProblem(counts, Topology(4), num_redundant=4), SolveOptions(time_limit_s=3.0))
    b = solve(PlacementProblem(counts / 1e4, Topology(4), num_redundant=4), SolveOptions(time_limit_s=3.0))
    np.testing.assert_allclose(_max_loads(b, counts / 1e4) * 1e4, _max_loads(a, counts), rtol=1e-4)


def test_load_scale_resolves_a_millionth_of_the_largest_layer():
    assert load_scale(np.array([[3.0, 4.0]])) == 1
    assert load_scale(np.zeros((2, 3))) == 1
    assert load_scale(np.array([[0.25, 0.75]])) == 10 ** 6
    assert load_scale(np.array([[2.5, 7.5]])) == 10 ** 5
    assert load_scale(np.array([[1e6 + 0.5, 1.0]])) == 1
