"""Exact counts: a worked example by hand, and the fast path against a per-token loop and the reference."""

from __future__ import annotations

import numpy as np
import pytest

from placer.core.stats import FastCounter, RoutingStats, compute_stats, stats_from_batches
from placer.core.stats.core import COUNT_FIELDS
from placer.core.stats.stream import SplitBy
from placer.core.trace import RoutingBatch
from tests.stats.conftest import loop_counts, random_batch, worked_example


def _assert_counts_equal(a, b):
    for name in COUNT_FIELDS:
        x = a[name] if isinstance(a, dict) else getattr(a, name)
        y = b[name] if isinstance(b, dict) else getattr(b, name)
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_worked_example_by_hand():
    meta, b = worked_example()
    s = compute_stats([b], *meta.shape)
    assert s.tokens == 3
    np.testing.assert_array_equal(s.tokens_L, [3, 2])
    np.testing.assert_array_equal(s.pair_tokens_L, [2])  # token 2 is missing at layer 1
    np.testing.assert_array_equal(s.load_LE, [[1, 2, 1, 2], [1, 1, 2, 0]])
    np.testing.assert_array_equal(s.load1_LE, [[0, 2, 0, 1], [1, 0, 1, 0]])
    # Layer 0 pairs: {1,3} (token 0), {0,3} (token 1), {1,2} (token 2); diagonal = load.
    np.testing.assert_array_equal(s.coact_LEE[0], [[1, 0, 0, 1], [0, 2, 1, 1], [0, 1, 1, 0], [1, 1, 0, 2]])
    np.testing.assert_array_equal(s.coact_LEE[1], [[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 2, 0], [0, 0, 0, 0]])
    # Transitions: token 0: (1,0) (1,2) (3,0) (3,2); token 1: (3,2) (3,1) (0,2) (0,1); token 2 is not counted.
    np.testing.assert_array_equal(s.trans_LEE[0], [[0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 2, 0]])
    want1 = np.zeros((4, 4), int)
    want1[1, 0] = want1[3, 2] = 1
    np.testing.assert_array_equal(s.trans1_LEE[0], want1)


@pytest.mark.parametrize("T,L,E,K,drop,seed", [
    (500, 4, 8, 2, 0.2, 0),
    (400, 3, 16, 4, 0.0, 1),
    (300, 1, 5, 1, 0.3, 2),     # one layer: no transitions
    (300, 5, 6, 6, 0.1, 3),     # K = E
    (200, 3, 300, 3, 0.25, 4),  # uint16 ids
])
def test_fast_path_equals_per_token_loop_and_reference(T, L, E, K, drop, seed):
    b = random_batch(T, L, E, K, seed, drop)
    want = loop_counts(b.experts_TLK, b.present_TL, E)
    ref = RoutingStats.empty(L, E, K)
    ref.add_batch(b)
    _assert_counts_equal(ref, want)
    # The fast path, fed in uneven pieces (a token never straddles two pieces).
    c = FastCounter(L, E, K)
    for lo, hi in ((0, 7), (7, 8), (8, T // 2), (T // 2, T)):
        c.add(b.experts_TLK[lo:hi], None if b.present_TL is None else b.present_TL[lo:hi])
    fast = c.result()
    _assert_counts_equal(fast, want)
    assert fast.tokens == T
    # Invariants: a layer's load sums to K x tokens present; coact is symmetric; trans rows sum to K x pairs.
    np.testing.assert_array_equal(fast.load_LE.sum(1), K * fast.tokens_L)
    np.testing.assert_array_equal(fast.coact_LEE, fast.coact_LEE.transpose(0, 2, 1))
    np.testing.assert_array_equal(fast.trans_LEE.sum((1, 2)), K * K * fast.pair_tokens_L)


def test_ids_outside_the_experts_are_refused():
    c = FastCounter(2, 4, 1)
    with pytest.raises(ValueError, match="expert id 4 outside"):
        c.add(np.array([[[4], [0]]], dtype=np.uint8))
    # An out-of-range id where the token is missing is ignored, as the format says.
    c.add(np.array([[[9], [0]]], dtype=np.uint8), np.array([[False, True]]))
    assert c.result().tokens_L.tolist() == [0, 1]


@pytest.mark.parametrize("by", ["phase", "domain", "seq:7", "position:4"])
def test_splits_equal_statistics_of_their_tokens_and_sum_to_the_total(by):
    b = random_batch(600, 3, 8, 2, seed=5)
    meta_shape = (3, 8, 2)
    from placer.core.trace import TraceMeta

    meta = TraceMeta(*meta_shape)
    split = SplitBy.parse(by)
    s = stats_from_batches(meta, [b], by=split)
    total = compute_stats([b], *meta_shape)
    _assert_counts_equal(s, total)
    codes = split.codes(b)
    assert len(s.splits) == len(np.unique(codes))
    for code in np.unique(codes):
        mine = codes == code
        part = RoutingBatch(experts_TLK=b.experts_TLK[mine], present_TL=b.present_TL[mine])
        _assert_counts_equal(s.splits[split.name(int(code))], loop_counts(part.experts_TLK, part.present_TL, 8))


def test_split_names():
    assert SplitBy.parse("phase").name(1) == "decode"
    assert SplitBy.parse("seq:100").name(2) == "seq 200-299"
    assert SplitBy.parse("position:512").name(0) == "position 0-511"
    for bad, msg in (("layer", "choose phase"), ("seq", "give the range width"), ("phase:2", "takes no range"),
                     ("seq:x", "not an integer"), ("seq:0", "positive")):
        with pytest.raises(ValueError, match=msg):
            SplitBy.parse(bad)


def test_sample_is_spread_over_the_stream():
    from placer.core.trace import TraceMeta

    b = random_batch(1000, 2, 8, 2, seed=6, drop=0)
    s = stats_from_batches(TraceMeta(2, 8, 2), [b], sample_tokens=100, total_tokens=1000)
    np.testing.assert_array_equal(s.sample.experts_TLK, b.experts_TLK[::10])
