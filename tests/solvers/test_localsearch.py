"""The local-search kernels move by move: every swap's predicted change equals the objective recomputed from
scratch, the running sums stay those of the new assignment, a swap is refused exactly when it would break the
copy order (copies on different GPUs) or the cap, and no search ever puts two copies of one expert on one GPU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placer.core.topology import Topology
from solvers import localsearch as ls
from solvers.assignment import terms
from solvers.instance import build_instance
from solvers.problem import PlacementProblem, SolveOptions

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def instances(draw, mode: str):
    """A small random instance: 1-3 layers, 4-8 experts, top-1 to top-3, 2 or 4 GPUs in 1 or 2 nodes, with or
    without copies (hot experts: Zipf-like routing), token paths, a cap or none."""
    G = draw(st.sampled_from([2, 4]))
    N = draw(st.sampled_from([n for n in (1, 2) if G % n == 0]))
    E = draw(st.sampled_from([e for e in (4, 6, 8) if e >= G]))
    R = draw(st.sampled_from([r for r in (0, 1, 2, 3, 4, 6, 8) if (E + r) % G == 0 and E + r <= E * G]))
    L = draw(st.integers(1 if mode == "ep" else 2, 3))
    K = draw(st.integers(1, min(3, E)))
    T = draw(st.integers(20, 200))
    seed = draw(st.integers(0, 2**31 - 1))
    params = draw(st.sampled_from([{}, {"max_imbalance": 0}]))  # the default cap (1.05, adapted) or none
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, E + 1) ** 1.2
    paths = np.stack([np.stack([rng.choice(E, size=K, replace=False, p=p / p.sum()) for _ in range(L)])
                      for _ in range(T)]).astype(np.int16)
    load = np.stack([np.bincount(paths[:, l].ravel().astype(np.int64), minlength=E) for l in range(L)]).astype(float)
    problem = PlacementProblem(load_LE=load, topology=Topology(G, N), num_redundant=R, mode=mode, top_k=K,
                               paths_TLK=paths, seq_T=np.arange(T))
    inst = build_instance(problem, SolveOptions(params=params))
    return inst, rng


def feasible_swap(inst, rules, gpu_LP, l, i, j) -> bool:
    """From scratch: items i and j of layer l on different GPUs, and after swapping them every expert's copies
    in increasing GPU order (``copy_step`` apart) and no GPU above the search's cap."""
    if gpu_LP[l, i] == gpu_LP[l, j]:
        return False
    trial = gpu_LP.copy()
    trial[l, i], trial[l, j] = trial[l, j], trial[l, i]
    loads = np.bincount(trial[l], weights=inst.load_LP[l], minlength=inst.G)
    cap = rules.cap[0] if len(rules.cap) == 1 else rules.cap[l]  # ep: one layer's rules
    return inst.order_ok(trial) and loads.max() <= cap


def check_moves(inst, rng, gpu_LP, rules, layers, move, swap, value, n=50):
    """Random swaps of items of ``layers``: ``move(l, i, j)`` (the predicted change, nan if refused) is nan exactly
    when the swap is infeasible from scratch; else after ``swap(l, i, j)`` the objective ``value()`` changed by it,
    and no GPU holds two copies of one expert."""
    for _ in range(n):
        l, i, j = int(rng.choice(layers)), int(rng.integers(inst.P)), int(rng.integers(inst.P))
        predicted = move(l, i, j)
        assert np.isnan(predicted) == (not feasible_swap(inst, rules, gpu_LP, l, i, j))
        if np.isnan(predicted):
            continue
        before = value()
        swap(l, i, j)
        assert value() == pytest.approx(before + predicted, rel=1e-9, abs=1e-6)
        assert inst.order_ok(gpu_LP)


def assert_sums_equal(a, b):
    """The running sums ``a`` equal the sums ``b`` made from scratch (scratch arrays aside)."""
    for name, x, y in zip(a._fields, a, b):
        if name not in ("dg", "dn", "stamp", "affected", "mark", "top"):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, err_msg=name)


@SETTINGS
@given(instances("ep"))
def test_ep_moves_predict_the_exact_change(case):
    inst, rng = case
    costs = ls.costs_of(inst)
    gpu = inst.start_gpu_LP.copy()
    for l in range(inst.L):
        t = inst.types_L[l]
        data = ls.ep_data(inst, l, t.items_XK.astype(np.int64), t.count_X)
        rules = ls.rules_of(inst, slice(l, l + 1))
        row = gpu[l]  # a view: the kernels move items in gpu itself
        sums = ls.ep_sums(data, row, rules.w[0])
        check_moves(inst, rng, gpu, rules, [l],
                    move=lambda l, i, j: ls.ep_move(data, sums, rules, costs, row, i, j),
                    swap=lambda l, i, j: ls.ep_swap(data, sums, row, rules.w[0], i, j),
                    value=lambda: ls.layer_value(inst, l, row))
        assert_sums_equal(sums, ls.ep_sums(data, row, rules.w[0]))


@SETTINGS
@given(instances("ep"))
def test_pairwise_moves_predict_the_surrogate_change(case):
    inst, rng = case
    costs = ls.costs_of(inst)
    node = inst.node_of_gpu.astype(np.int64)
    gpu = inst.start_gpu_LP.copy()
    for l in range(inst.L):
        W = inst.pair_weights(l)
        rules = ls.rules_of(inst, slice(l, l + 1))
        row = gpu[l]
        sums = ls.pair_sums(W, row, node, inst.N, rules.w[0])
        check_moves(inst, rng, gpu, rules, [l],
                    move=lambda l, i, j: ls.pair_move(W, sums, node, rules, costs, row, i, j),
                    swap=lambda l, i, j: ls.pair_swap(W, sums, node, row, rules.w[0], i, j),
                    value=lambda: ls.pair_value(W, row, node, rules.w[0], costs))
        assert_sums_equal(sums, ls.pair_sums(W, row, node, inst.N, rules.w[0]))


@SETTINGS
@given(instances("coherent"))
def test_coherent_moves_predict_the_exact_change(case):
    inst, rng = case
    costs = ls.costs_of(inst)
    node = inst.node_of_gpu.astype(np.int64)
    rules = ls.rules_of(inst)
    gpu = inst.start_gpu_LP.copy()
    sums = ls.coherent_sums(inst.trans_LPP, gpu, node, inst.N, rules.w)
    check_moves(inst, rng, gpu, rules, range(inst.L),
                move=lambda l, i, j: ls.coherent_move(sums, node, rules, costs, gpu, l, i, j),
                swap=lambda l, i, j: ls.coherent_swap(inst.trans_LPP, sums, node, gpu, rules.w, l, i, j),
                value=lambda: terms(inst, gpu).value)
    assert_sums_equal(sums, ls.coherent_sums(inst.trans_LPP, gpu, node, inst.N, rules.w))


@SETTINGS
@given(instances("ep") | instances("coherent"), st.integers(1, 10**6))
def test_searches_check_their_changes_and_never_put_two_copies_on_a_gpu(case, budget):
    """Whole searches (any budget, so any number of moves) with the running value checked against the objective
    (``CHECK_CHANGES``: the tests turn it on): never worse, copies on different GPUs, the cap kept."""
    inst, _ = case
    assert ls.CHECK_CHANGES
    gpu, _ = ls.improve(inst, inst.start_gpu_LP, budget)
    assert inst.order_ok(gpu) and inst.capacity_ok(gpu)
    assert terms(inst, gpu).value <= terms(inst, inst.start_gpu_LP).value + 1e-6
    for l in range(inst.L):
        assert np.bincount(gpu[l], weights=inst.load_LP[l], minlength=inst.G).max() <= inst.cap_L[l] * (1 + 1e-9)


def test_a_wrong_running_sum_fails_the_check(monkeypatch):
    """The check is live: a search whose predicted change is off makes improve() fail."""
    from tests.solvers.helpers import problem_of, trace

    _, b = trace(2, 8, 2, 400, seed=3)
    inst = build_instance(problem_of(b, 8, 4, 1, 0, "coherent"), SolveOptions())
    real = ls.coherent_search

    def off_by_one(*args):
        change, work = real(*args)
        return change + 1.0, work

    monkeypatch.setattr(ls, "coherent_search", off_by_one)
    with pytest.raises(AssertionError, match="predicted a change"):
        ls.improve(inst, inst.start_gpu_LP, 1e6)
