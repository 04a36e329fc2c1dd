"""The optimising solvers' objective: equal to what the cost model measures, and bounded from below."""

from __future__ import annotations

import numpy as np
import pytest

from placer.core.cost import evaluate_trace
from placer.core.objective import Objective, Quantity, Term, Weights
from placer.core.placement import Placement, SolveReport
from placer.core.topology import Topology
from placer.core.trace.schema import RoutingBatch
from solvers.assignment import feasible, gpu_from_placement, layer_loads, terms
from solvers.bounds import _distinct_lb, balance_lb, bmatching_ub, lower_bound, star_lb
from solvers.instance import build_instance, max_imbalance_of, sort_copies
from solvers.problem import SolveOptions
from tests.solvers.helpers import brute_force, labelled_layers, problem_of, trace


def random_assignment(inst, rng):
    return np.stack([sort_copies(rng.permutation(np.arange(inst.P) // inst.s), inst.item_expert_LP[l])
                     for l in range(inst.L)])


@pytest.mark.parametrize("mode", ["ep", "coherent"])
@pytest.mark.parametrize("redundant,nodes", [(0, 1), (0, 2), (4, 2)])
def test_objective_equals_cost_model(mode, redundant, nodes):
    """Loads, dispatch GPUs/nodes (ep) and pair hops (coherent) of the item model are the cost model's, with
    copies (the replica rule), nodes and dropped rows; the weighted objective is what evaluate measures."""
    _, b = trace(3, 8, 3, 2500, seed=1, drop_rate=0.05)
    problem = problem_of(b, 8, 4, nodes, redundant, mode)
    inst = build_instance(problem, SolveOptions(params={"balance_weight": 0.5, "inter_weight": 5}))
    rng = np.random.default_rng(0)
    for _ in range(3):
        gpu = random_assignment(inst, rng)
        t = terms(inst, gpu)
        placement = problem.placement(gpu, inst.item_expert_LP, SolveReport())
        assert np.array_equal(gpu_from_placement(inst, placement), gpu)
        r = evaluate_trace(b, placement, problem.topology, mode)
        assert np.array_equal(r.max_load_L, t.maxload_L)
        if mode == "coherent":
            assert np.array_equal(r.pair_hops_L1, t.gpus_L) and np.array_equal(r.node_pair_hops_L1, t.nodes_L)
        else:
            assert np.array_equal(r.dispatch_gpus_L, t.gpus_L) and np.array_equal(r.dispatch_nodes_L, t.nodes_L)
        assert inst.objective.measure(r) == pytest.approx(t.value, rel=1e-12)


def test_ep_objective_is_remote_fanout_averaged_over_home_ranks():
    """Rotating every token's home rank through all G GPUs and averaging evaluate's remote GPUs / nodes gives
    (G-1)/G x dispatch GPUs and (N-1)/N x dispatch nodes: the ep objective's traffic terms."""
    _, b = trace(2, 8, 3, 1200, seed=2)
    problem = problem_of(b, 8, 4, 2, 0, "ep")
    inst = build_instance(problem, SolveOptions())
    gpu = random_assignment(inst, np.random.default_rng(1))
    placement = problem.placement(gpu, inst.item_expert_LP, SolveReport())
    remote = np.zeros(2)
    for r in range(4):
        shifted = RoutingBatch(experts_TLK=b.experts_TLK, seq_T=b.seq_T + r)
        res = evaluate_trace(shifted, placement, problem.topology, "ep")
        remote += [res.remote_gpus_L.sum(), res.remote_nodes_L.sum()]
    t = terms(inst, gpu)
    assert remote[0] / 4 == pytest.approx(t.gpus_L.sum() * 3 / 4)
    assert remote[1] / 4 == pytest.approx(t.nodes_L.sum() * 1 / 2)


def test_weighted_objectives_are_measured_and_recorded():
    _, b = trace(2, 8, 2, 500, seed=3)
    problem = problem_of(b, 8, 4, 1, 0, "coherent")
    placement = Placement(np.tile(np.arange(8), (2, 1)), 4, 8, topology=problem.topology)
    r = evaluate_trace(b, placement, problem.topology, "coherent")
    objective = Objective((Term(Quantity.COHERENT_PAIR_HOPS, 2.5), Term(Quantity.MAX_LOAD, 1.0)))
    assert objective.measure(r) == pytest.approx(2.5 * r.pair_hops_L1.sum() + r.max_load_L.sum())
    assert objective.name == "2.5*coherent_pair_hops+1.0*max_load"
    assert Objective.from_dict(objective.to_dict()) == objective
    assert Objective.of(Quantity.EP_DISPATCH_GPUS).measure(r) is None  # another mode
    with pytest.raises(ValueError, match="unknown quantity 'x'"):
        Objective.from_dict({"terms": [{"quantity": "x", "weight": 1.0}], "robust": None})
    robust = objective.with_robust("worst")
    assert robust.name == "worst scenario of (2.5*coherent_pair_hops+1.0*max_load)/tokens"
    assert Objective.from_dict(robust.to_dict()) == robust
    assert robust.measure(r) == pytest.approx(objective.measure(r) / r.tokens)
    assert robust.measure_scenarios([r, r]) == pytest.approx(robust.measure(r))
    with pytest.raises(ValueError, match="mixes the traffic models"):
        Objective((Term(Quantity.COHERENT_PAIR_HOPS, 1.0), Term(Quantity.EP_DISPATCH_GPUS, 1.0)))


@pytest.mark.parametrize("mode,L,E,K,G,N,R", [
    ("ep", 2, 6, 3, 2, 1, 0), ("coherent", 2, 6, 2, 3, 1, 0), ("ep", 2, 4, 2, 4, 2, 0), ("coherent", 3, 4, 2, 2, 2, 0),
    # Two slots per GPU with copies: the exact pairing of the balance bound and the pair matching of distinct
    # GPUs (top-2, and top-3 across two nodes of two GPUs).
    ("ep", 2, 3, 2, 2, 1, 1), ("ep", 1, 6, 3, 4, 2, 2), ("ep", 2, 5, 2, 3, 1, 1),
])
def test_lower_bound_below_the_optimum(mode, L, E, K, G, N, R):
    """The min-cost-flow / tangent bound never exceeds the true optimum found by enumeration."""
    _, b = trace(L, E, K, 600, seed=4)
    inst = build_instance(problem_of(b, E, G, N, R, mode), SolveOptions(params={"max_imbalance": 0}))
    assert inst.s == (2 if R else inst.s)
    best = brute_force(inst, lambda g: terms(inst, g).value, lambda g: feasible(inst, g))
    lb, _ = lower_bound(inst)
    assert lb <= best + 1e-6
    assert lb > 0.5 * best  # and it is not trivial on these instances


@pytest.mark.parametrize("w", [[5, 5, 5, 5, 0, 0], [9, 8, 7, 3, 2, 1], [4, 4, 4, 4, 4, 1], "random"])
def test_the_pairing_bound_of_two_slots_per_gpu_is_the_exact_balance_optimum(w):
    """With two items per GPU, the heaviest item with the lightest, the second heaviest with the second
    lightest, ... is the best pairing: ``balance_lb_items`` equals the least largest GPU load over every
    assignment (enumerated), also where it is above the mean and the heaviest with the lightest."""
    from solvers.bounds import balance_lb_items

    w = np.random.default_rng(11).integers(0, 50, size=8).astype(float) if w == "random" else np.array(w, float)
    G = len(w) // 2
    best = min(np.bincount(g, weights=w, minlength=G).max() for g in labelled_layers(len(w), G))
    assert balance_lb_items(w, G, 2) == pytest.approx(best)
    if w[0] == 5:  # 5 + 5 on one GPU: neither the mean (20 / 3) nor 5 + 0 says so
        assert best == 10 and max(w.sum() / G, w.max() + w.min()) < best


@pytest.mark.parametrize("seed", range(3))
def test_the_pair_matching_bounds_distinct_gpus_of_two_slots_per_gpu(seed):
    """ep, top-2, two items per GPU: a token reaches 2 GPUs less its co-located pair, and the co-located pairs
    weigh at most a b-matching of the pair weights (min-cost flow): the bound is below every assignment's
    distinct GPUs (enumerated), and within a few percent of their least."""
    _, b = trace(1, 6, 2, 500, seed=seed, clusters=3)
    inst = build_instance(problem_of(b, 6, 3, 1, 0, "ep"), SolveOptions(params={"max_imbalance": 0}))
    t = inst.types_L[0]
    W = inst.pair_weights(0)
    tot = np.bincount(t.items_XK.ravel(), weights=np.repeat(t.count_X, 2), minlength=inst.P)
    tokens = float(t.count_X.sum())
    lb = _distinct_lb(W, tot, tokens, 2, inst.s)
    distinct = [terms(inst, g[None, :]).gpus_L[0] - inst.offset_L[0] for g in labelled_layers(inst.P, inst.G)]
    assert lb <= min(distinct) + 1e-6
    assert lb >= 2 * tokens - bmatching_ub(W, 1, 1) / 2 - 1e-6 and lb >= star_lb(W, tot, 2, 2) - 1e-6
    assert lb >= 0.95 * min(distinct), (lb, min(distinct))


def test_bmatching_is_exact_on_whole_weights():
    """``bmatching_ub``: the heaviest set of pairs with each left item in at most ``cap_left`` pairs and each
    right one in at most ``cap_right``, against enumeration of every set of pairs."""
    import itertools

    rng = np.random.default_rng(7)
    W = rng.integers(0, 9, size=(3, 4)).astype(float)
    edges = [(i, j) for i in range(3) for j in range(4) if W[i, j] > 0]
    for cap_left, cap_right in ((1, 1), (2, 1), (1, 2), (2, 2)):
        best = 0.0
        for r in range(len(edges) + 1):
            for sub in itertools.combinations(edges, r):
                left = np.bincount([i for i, _ in sub], minlength=3)
                right = np.bincount([j for _, j in sub], minlength=4)
                if (left <= cap_left).all() and (right <= cap_right).all():
                    best = max(best, sum(W[i, j] for i, j in sub))
        assert bmatching_ub(W, cap_left, cap_right) == pytest.approx(best), (cap_left, cap_right)
    assert bmatching_ub(W + 0.25, 1, 1) >= bmatching_ub(W, 1, 1)  # real weights: rounded up, still a bound


@pytest.mark.parametrize("E,G,R", [(3, 3, 0), (3, 2, 1), (4, 2, 2), (2, 2, 2), (5, 3, 1)])
def test_load_balance_bounds_hold_for_every_placement_of_the_slots(E, G, R):
    """``load_balance_bounds`` (what solve --load reports for every solver): below the least largest GPU load
    of every placement of E experts in G x s slots, any copies, loads split evenly among copies (enumerated)."""
    import itertools

    from solvers.bounds import load_balance_bounds

    rng = np.random.default_rng(E * 10 + R)
    load = rng.integers(1, 100, size=(2, E)).astype(float)
    load[1, 0] = 500.0  # one hot expert: the heaviest copy binds
    P, s = E + R, (E + R) // G
    best = np.full(2, np.inf)
    for row in itertools.product(range(E), repeat=P):
        phy = np.array(row)
        cnt = np.bincount(phy, minlength=E)
        if (cnt == 0).any():
            continue
        for l in range(2):
            gpu_load = (load[l, phy] / cnt[phy]).reshape(G, s).sum(axis=1)
            best[l] = min(best[l], gpu_load.max())
    lb = load_balance_bounds(load, G, s)
    assert (lb <= best + 1e-9).all(), (lb, best)
    assert (lb >= load.sum(axis=1) / G - 1e-9).all() and (lb > 0.6 * best).all()


def test_star_bound_holds_for_every_assignment():
    _, b = trace(1, 16, 4, 2000, seed=5, clusters=4)
    inst = build_instance(problem_of(b, 16, 4, 2, 0, "ep"), SolveOptions())
    t = inst.types_L[0]
    W = inst.pair_weights(0)
    tot = np.bincount(t.items_XK.ravel(), weights=np.repeat(t.count_X, 4), minlength=16)
    lb_gpu, lb_node = star_lb(W, tot, 4, 4), star_lb(W, tot, 8, 4)
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = terms(inst, random_assignment(inst, rng))
        assert lb_gpu <= g.gpus_L[0] + 1e-6 and lb_node <= g.nodes_L[0] + 1e-6


def test_statistics_without_paths_are_exact_for_top2_and_estimates_otherwise():
    _, b = trace(2, 8, 2, 800, seed=6)
    with_paths = build_instance(problem_of(b, 8, 4, 1, 0, "ep"), SolveOptions())
    stats_only = build_instance(problem_of(b, 8, 4, 1, 0, "ep", paths=False), SolveOptions())
    assert stats_only.exact and not stats_only.from_paths
    gpu = random_assignment(with_paths, np.random.default_rng(2))
    assert terms(stats_only, gpu).value == pytest.approx(terms(with_paths, gpu).value)
    _, b3 = trace(2, 8, 3, 800, seed=6)
    assert not build_instance(problem_of(b3, 8, 4, 1, 0, "ep", paths=False), SolveOptions()).exact
    assert not build_instance(problem_of(b, 8, 4, 1, 4, "ep", paths=False), SolveOptions()).exact


def test_weights_defaults_and_errors():
    w = Weights.for_topology(Topology(8, 2), "ep")
    # NVLink 450 GB/s vs network 50 GB/s; a token of expert compute (6 x 7168 x 2048 FLOP at 600 TFLOP/s)
    # against a 14,336-byte NVLink message, spread over 8 GPUs, halved in ep mode (two messages per remote).
    assert (w.intra_weight, w.inter_weight, w.balance_weight, max_imbalance_of({})) == (1.0, 9.0, 18.432, 1.05)
    assert Weights.for_topology(Topology(8, 2), "coherent").balance_weight == 36.864
    for given, msg in [({"balance_weight": -1}, "balance_weight (-1.0) must be >= 0"),
                       ({"intra_weight": -0.5}, "intra_weight (-0.5) must be >= 0"),
                       ({"intra_weight": 2, "inter_weight": 1}, "inter_weight (1.0) must be >= intra_weight (2.0)"),
                       ({"balance_weight": "x"}, "balance_weight must be a finite number")]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            Weights.for_topology(Topology(8, 2), "ep", **given)
    with pytest.raises(ValueError, match=r"max_imbalance \(0.9\) must be >= 1"):
        max_imbalance_of({"max_imbalance": 0.9})


def test_explicit_cap_below_what_any_placement_reaches_is_refused():
    _, b = trace(2, 8, 2, 1000, seed=7, zipf=1.5)
    problem = problem_of(b, 8, 4)
    build_instance(problem, SolveOptions())  # the default cap adapts
    with pytest.raises(ValueError, match=r"max_imbalance 1.0 caps layer \d's largest GPU load at .* but no "
                                         r"placement goes below"):
        build_instance(problem, SolveOptions(params={"max_imbalance": 1.0}))
