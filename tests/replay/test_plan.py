"""Dispatch plans: a worked example checked by hand, invariants on random routings, and a NumPy simulation
of the plan (no torch) that must reproduce the direct computation in both traffic models."""

from __future__ import annotations

import numpy as np
import pytest

from placer.core.placement import Placement
from placer.replay.plan import corrupt_plan, exchanges_of, link_bytes, plan_step

# The worked example of docs/replay.md: 2 GPUs, 4 experts, 2 layers, top-2, three tokens.
# Layer 0: GPU 0 holds experts 0, 1 and GPU 1 experts 2, 3; layer 1: GPU 0 holds 0, 2 and GPU 1 holds 1, 3.
EXAMPLE = Placement([[0, 1, 2, 3], [0, 2, 1, 3]], num_gpus=2, num_experts=4)
EX_TLK = np.array([[[0, 2], [1, 3]],   # t0, sequence 0 (home GPU 0)
                   [[2, 3], [0, 1]],   # t1, sequence 1 (home GPU 1)
                   [[0, 1], [0, 2]]])  # t2, sequence 0 (home GPU 0)
W_TLK = np.array([[[0.7, 0.3], [0.6, 0.4]], [[0.5, 0.5], [0.8, 0.2]], [[0.9, 0.1], [0.55, 0.45]]], dtype=np.float32)
SEQ_T = np.array([0, 1, 0])


def _plan(mode, placement=EXAMPLE, ex=EX_TLK, w=W_TLK, present=None, seq=SEQ_T, first=0):
    return plan_step(placement, ex, w, present, seq, np.arange(first, first + len(ex)), mode)


def _rows_sent(plan):
    return {(l, ph): [int(e.send_splits.sum()) for e in per] for l, ph, per in exchanges_of(plan)}


def test_worked_example_ep_by_hand():
    p = _plan("ep")
    assert [list(h) for h in p.home_tokens] == [[0, 2], [1]]
    d0 = p.layers[0].dispatch
    # Layer 0: t0 needs experts 0 (GPU 0) and 2 (GPU 1): GPU 0 sends it once to GPU 1; t1 and t2 stay home.
    assert list(d0[0].send_splits) == [0, 1] and list(d0[0].send_idx) == [0]
    assert list(d0[1].recv_splits) == [1, 0] and list(d0[1].tokens) == [0, 1] and list(d0[1].recv_dst) == [0]
    c1 = p.layers[0].compute[1]
    # GPU 1's slot 0 (expert 2) gets t0 (w 0.3) and t1 (w 0.5); slot 1 (expert 3) gets t1 (w 0.5).
    assert [list(r) for r in c1.slot_tokens] == [[0, 1], [1]]
    np.testing.assert_allclose(c1.slot_weights[0], [0.3, 0.5])
    assert list(c1.keep) == [False, True]  # only its home token t1 keeps the residual
    # Layer 1: t0 (experts 1, 3: both on GPU 1) goes 0 -> 1 and back; t1 (experts 0 on GPU 0, 1 on GPU 1) 1 -> 0.
    assert _rows_sent(p) == {(0, "dispatch"): [1, 0], (0, "combine"): [0, 1],
                             (1, "dispatch"): [1, 1], (1, "combine"): [1, 1]}


def test_worked_example_coherent_by_hand():
    p = _plan("coherent")
    # Layer 0 as ep; then t0 goes from {0, 1} to {1} (GPU 0 sends its partial), t1 from {1} to {0, 1};
    # at the end t0 comes home from GPU 1 and t1 from GPU 0. t2 never moves.
    assert _rows_sent(p) == {(0, "dispatch"): [1, 0], (1, "dispatch"): [1, 1], (-1, "return"): [1, 1]}
    assert list(p.layers[0].compute[0].keep) == [True, True]   # GPU 0 is the lowest rank of t0's and t2's
    assert list(p.layers[0].compute[1].keep) == [False, True]  # t1's only rank is GPU 1
    assert list(p.final[0].tokens) == [0, 2] and list(p.final[1].tokens) == [1]


def _random_case(rng, G=4, E=8, L=3, K=2, T=64, redundant=4, drop=0.1):
    P = E + redundant
    rows = []
    for _ in range(L):
        row = np.concatenate([rng.permutation(E), rng.integers(0, E, redundant)])
        rows.append(rng.permutation(row))
    placement = Placement(np.array(rows), num_gpus=G, num_experts=E, num_nodes=2)
    ex = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)]) for _ in range(T)])
    w = rng.random((T, L, K)).astype(np.float32)
    present = rng.random((T, L)) > drop
    seq = rng.integers(0, 10, T)
    assert P % G == 0
    return placement, ex, w, present, seq


@pytest.mark.parametrize("mode", ["ep", "coherent"])
def test_invariants_on_random_routings(mode):
    rng = np.random.default_rng(0)
    for trial in range(5):
        placement, ex, w, present, seq = _random_case(rng)
        first = 1000 * trial
        plan = _plan(mode, placement, ex, w, present, seq, first)
        G, spg = placement.num_gpus, placement.slots_per_gpu
        for _, _, per in exchanges_of(plan):
            sent = np.array([e.send_splits for e in per])   # [src, dst]
            got = np.array([e.recv_splits for e in per])    # [dst, src]
            np.testing.assert_array_equal(sent, got.T)
            assert (np.diag(sent) == 0).all()                # never to itself
        for l, lp in enumerate(plan.layers):
            # Every present (token, rank) pair is computed exactly once, on the rank and local slot of the
            # replica rule's slot, with the trace's gate weight.
            slot = placement.slots_for_tokens(l, ex[:, l], np.arange(first, first + len(ex)))
            want = {(int(t), int(slot[t, k]), float(w[t, l, k])) for t in range(len(ex)) for k in range(2)
                    if present[t, l]}
            got = set()
            for r, cp in enumerate(lp.compute):
                for j in range(spg):
                    for t, wt in zip(cp.slot_tokens[j], cp.slot_weights[j]):
                        got.add((int(t), r * spg + j, float(wt)))
            assert got == want
            if mode == "ep":
                # A token goes once to each distinct remote rank of its experts, and comes back once from each.
                rank = slot // spg
                home = seq % G
                fan = sum(len(set(rank[t]) - {home[t]}) for t in range(len(ex)) if present[t, l])
                assert sum(int(e.send_splits.sum()) for e in lp.dispatch) == fan
                assert sum(int(e.send_splits.sum()) for e in lp.combine) == fan


def _simulate(plan, h0, experts, spg):
    """Apply a plan with NumPy: buffers per rank, exchanges as sums, experts as functions of (layer, slot)."""
    G = plan.num_ranks
    bufs = [h0[plan.home_tokens[r]] for r in range(G)]

    def exchange(per):
        out = []
        sent = [np.split(bufs[s][per[s].send_idx], np.cumsum(per[s].send_splits)[:-1]) for s in range(G)]
        for d in range(G):
            new = np.zeros((per[d].num_rows, h0.shape[1]))
            new[per[d].own_dst] += bufs[d][per[d].own_src]
            recv = np.concatenate([sent[s][d] for s in range(G)])
            np.add.at(new, per[d].recv_dst, recv)
            out.append(new)
        return out

    for l, lp in enumerate(plan.layers):
        bufs = exchange(lp.dispatch)
        new = []
        for r, cp in enumerate(lp.compute):
            x = bufs[r]
            out = np.where(cp.keep[:, None], x, 0.0)
            for j in range(spg):
                rows = cp.slot_rows[j]
                np.add.at(out, rows, experts(l, r * spg + j, x[rows]) * cp.slot_weights[j][:, None])
            new.append(out)
        bufs = new
        if lp.combine is not None:
            bufs = exchange(lp.combine)
    if plan.final is not None:
        bufs = exchange(plan.final)
    out = np.zeros_like(h0)
    for r in range(G):
        out[plan.home_tokens[r]] = bufs[r]
    return out


@pytest.mark.parametrize("mode", ["ep", "coherent"])
def test_numpy_simulation_of_the_plan_equals_direct_computation(mode):
    rng = np.random.default_rng(1)
    placement, ex, w, present, seq = _random_case(rng, T=50)
    L, E, H = 3, 8, 5
    A = rng.normal(size=(L, E, H, H)) / H
    fn = lambda l, e, x: np.tanh(x @ A[l, e].T)  # noqa: E731
    h0 = rng.normal(size=(len(ex), H))
    direct = h0.copy()
    for l in range(L):
        nxt = direct.copy()
        for t in range(len(ex)):
            if present[t, l]:
                nxt[t] += sum(w[t, l, k] * fn(l, ex[t, l, k], direct[t:t + 1])[0] for k in range(2))
        direct = nxt
    plan = _plan(mode, placement, ex, w, present, seq)
    by_slot = lambda l, p, x: fn(l, placement.phy2log_LP[l, p], x)  # noqa: E731
    np.testing.assert_allclose(_simulate(plan, h0, by_slot, placement.slots_per_gpu), direct, rtol=1e-10, atol=1e-10)
    # The corrupted plan of the test hook does not.
    layer, tok = corrupt_plan(plan, placement, "expert")
    bad = _simulate(plan, h0, by_slot, placement.slots_per_gpu)
    wrong = np.nonzero(np.abs(bad - direct).max(axis=1) > 1e-8)[0]
    assert list(wrong) == [tok]


def test_link_bytes_by_node():
    plan = _plan("ep", Placement([[0, 1, 2, 3]] * 2, num_gpus=4, num_experts=4, num_nodes=2))
    nodes = np.array([0, 0, 1, 1])
    # t0 (home 0) needs experts 0 (GPU 0) and 2 (GPU 2): one row across nodes; t2 needs 0, 1: one row inside.
    ex0 = plan.layers[0].dispatch[0]
    assert list(ex0.send_splits) == [0, 1, 1, 0]
    assert link_bytes(ex0, 0, 100, nodes) == (100, 100, 1, 1)
