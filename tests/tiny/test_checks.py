"""The routing-quality measures on hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import pytest

from placer.tiny.checks import (
    adjacent_layer_mi,
    max_share_over_fair,
    mutual_information_bits,
    routing_report,
    shuffled_control,
)


def test_mutual_information_worked_examples():
    a = np.array([0, 0, 1, 1])
    # B = A: I = H(A) = 1 bit. B independent of A (each pair once): 0 bits.
    assert mutual_information_bits(a, a, 2) == pytest.approx(1.0)
    assert mutual_information_bits(a, np.array([0, 1, 0, 1]), 2) == pytest.approx(0.0)
    # Four experts used uniformly and copied: 2 bits; a relabelling does not change it.
    b = np.arange(8) % 4
    assert mutual_information_bits(b, (b + 1) % 4, 4) == pytest.approx(2.0)
    # p(a,b) = [[1/2, 0], [1/4, 1/4]]: I = H(B) - H(B|A) = H(3/4) - 1/2 * 1 = 0.3113 bits.
    assert mutual_information_bits(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), 2) == pytest.approx(
        -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)) - 0.5, abs=1e-9)


def test_shuffled_control_keeps_marginals_and_destroys_dependence():
    rng = np.random.default_rng(0)
    T, L, E = 20000, 4, 8
    x = np.zeros((T, L, 2), dtype=np.uint8)
    x[:, 0, 0] = rng.integers(0, E, T)
    for l in range(1, L):  # each layer copies the previous one's top-1 expert: I = H = 3 bits
        x[:, l, 0] = (x[:, l - 1, 0] + 1) % E
    x[:, :, 1] = (x[:, :, 0] + 3) % E
    s = shuffled_control(x, seed=1)
    for l in range(L):
        np.testing.assert_array_equal(np.sort(s[:, l, 0]), np.sort(x[:, l, 0]))
    mi = adjacent_layer_mi(x, E)
    assert mi == pytest.approx(np.full(L - 1, 3.0), abs=0.01)
    assert adjacent_layer_mi(s, E).max() < 0.01
    rep = routing_report(x, E)
    assert rep["mi_gap_bits"] > 2.9 and rep["max_share_over_fair"] < 1.1


def test_max_share_over_fair():
    # 4 tokens, top-2 of 4 experts: fair share is 2 picks per expert; expert 0 has all 4 tokens.
    x = np.array([[[0, 1]], [[0, 2]], [[0, 3]], [[0, 1]]], dtype=np.uint8)
    np.testing.assert_allclose(max_share_over_fair(x, 4), [2.0])
