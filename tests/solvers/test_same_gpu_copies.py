"""No solver but ``eplb`` (which keeps DeepSeek's behaviour, and ``solve`` warns) puts two copies of one expert on
one GPU: the second copy would only split that GPU's tokens, a wasted slot. Parametrised over the registry, so a
new solver is covered."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from solvers.problem import SolveOptions
from solvers.registry import specs
from solvers.robust import Scenarios
from tests.solvers.helpers import problem_of, trace

NAMES = [s.name for s in specs() if s.name != "eplb"]


def hot_problems(spec, mode):
    """Problems whose EPLB rule gives the hot experts more copies than GPUs (and copies for every solver that
    places them): 2 layers, 8 experts (Zipf-skewed), top-2, 4 GPUs in 2 nodes, 8 redundant slots; and 2 GPUs."""
    out = []
    for gpus, nodes, seed in ((4, 2, 1), (2, 1, 2)):
        _, b = trace(2, 8, 2, 600, seed=seed, zipf=2.0)
        out.append(problem_of(b, 8, gpus, nodes, 8 if spec.copies else 0, mode))
    return out


@pytest.mark.parametrize("mode", ["ep", "coherent"])
@pytest.mark.parametrize("name", NAMES)
def test_no_solver_but_eplb_puts_two_copies_of_an_expert_on_a_gpu(name, mode):
    spec = next(s for s in specs() if s.name == name)
    for problem in hot_problems(spec, mode):
        if spec.copies:  # the instance is one where DeepSeek's rule does make them
            eplb = next(s for s in specs() if s.name == "eplb")(problem, SolveOptions(time_limit_s=1))
            assert eplb.same_gpu_copies_LG.sum() > 0
        p = spec(problem, SolveOptions(time_limit_s=1, seed=3))
        assert p.num_slots == problem.num_slots
        assert p.same_gpu_copies_LG.sum() == 0, (name, p.phy2log_LP.tolist())
        if spec.copies:
            assert (p.logcnt_LE > 1).any()


@pytest.mark.parametrize("mode", ["ep", "coherent"])
def test_robust_auto_puts_no_two_copies_on_a_gpu(mode):
    spec = next(s for s in specs() if s.name == "auto")
    problems = hot_problems(spec, mode)[:1]
    _, b = trace(2, 8, 2, 600, seed=9, zipf=2.0)
    problems.append(problem_of(b, 8, 4, 2, 8, mode))
    scn = Scenarios(tuple(problems), ("a", "b"), (600.0, 600.0))
    p = spec.solve_scenarios(scn, SolveOptions(time_limit_s=1))
    assert p.same_gpu_copies_LG.sum() == 0 and (p.logcnt_LE > 1).any()


def test_copies_are_capped_at_one_per_gpu_only_when_possible():
    from solvers.layout import copies_cap, replicate_hottest

    # 8 slots for 4 experts on 2 GPUs: at most 2 copies each, so every expert gets 2 whatever the load.
    _, cnt = replicate_hottest(np.array([90.0, 1.0, 1.0, 1.0]), 8, copies_cap(4, 8, 2))
    assert cnt.tolist() == [2, 2, 2, 2]
    # Without the cap (EPLB's rule, eplb): the hot expert takes all the extra slots.
    assert replicate_hottest(np.array([90.0, 1.0, 1.0, 1.0]), 8)[1].tolist() == [5, 1, 1, 1]
    # More slots per GPU than experts: some GPU must hold two copies; the cap allows it.
    assert copies_cap(2, 8, 2) == 4


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(0, 40), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_copies_capped_and_packed_never_share_a_gpu(G, extra_experts, extra_slots, seed):
    """EPLB's rule capped at one copy per GPU, then the LPT packing with labels (greedy's and auto's start): no
    GPU gets two copies of an expert, whatever the (Zipf-skewed) loads."""
    from solvers.layout import copies_cap, pack_balanced, replicate_hottest

    E = G + extra_experts
    s = -(-E // G) + extra_slots
    assume(G * s <= E * G)
    load = np.random.default_rng(seed).zipf(1.5, size=E).astype(float)
    phy, cnt = replicate_hottest(load, G * s, copies_cap(E, G * s, G))
    assert cnt.max() <= G
    pack, _ = pack_balanced(load[phy] / cnt[phy], G, s, label_N=phy)
    assert np.bincount(pack, minlength=G).tolist() == [s] * G
    for g in range(G):
        assert len(set(phy[pack == g].tolist())) == s


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(0, 20), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_random_deals_a_layer_whose_shuffle_put_two_copies_together(G, extra_experts, s, seed):
    from placer.core.placement import same_gpu_copies
    from solvers.random_layout import _apart

    E = max(G * s - extra_experts, 1)
    items = np.arange(G * s) % E
    out = _apart(np.random.default_rng(seed).permutation(items), G)
    assert sorted(out.tolist()) == sorted(items.tolist())
    assert same_gpu_copies(out[None], G).sum() == 0 or np.bincount(items).max() > G
