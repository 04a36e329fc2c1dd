"""Summary figures: worked values by hand, and planted structure showing up in them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from placer.core.stats import compute_stats, stats_from_batches, summarize
from placer.core.stats.summary import concentration, load_figures, mutual_information_bits
from placer.core.trace import RoutingBatch, TraceMeta, concat_batches
from placer.synth import SynthConfig, generate
from tests.stats.conftest import worked_example


def test_figures_by_hand():
    f = load_figures(np.array([[1, 1, 1, 1], [4, 0, 0, 0], [3, 1, 0, 0]]))
    np.testing.assert_allclose(f["imbalance"], [1.0, 4.0, 3.0])
    np.testing.assert_allclose(f["cv"], [0.0, math.sqrt(3), math.sqrt(((3 - 1) ** 2 + 0 + 1 + 1) / 4)])
    np.testing.assert_allclose(f["entropy_bits"], [2.0, 0.0, -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))])
    assert mutual_information_bits(np.array([[5, 0], [0, 5]])) == pytest.approx(1.0)
    assert mutual_information_bits(np.array([[2, 2], [3, 3]])) == pytest.approx(0.0)
    assert concentration(np.array([[3, 1], [0, 4]]), 1) == pytest.approx(7 / 8)
    assert concentration(np.array([[3, 1], [0, 4]]), 2) == pytest.approx(1.0)


def test_worked_example_summary():
    meta, b = worked_example()
    s = stats_from_batches(meta, [b], sample_tokens=10)
    out = summarize(s, top_m=1)
    assert out["tokens"] == 3 and out["layers"]["tokens"] == [3, 2]
    assert out["layers"]["imbalance"] == [pytest.approx(2 / 1.5), pytest.approx(2 / 1.0)]
    # Top-1 pairs (1 -> 0) and (3 -> 2): fully dependent, 1 bit.
    assert out["pairs"]["mutual_information_bits"] == [pytest.approx(1.0)]
    # trans rows: e0 -> {1, 2}, e1 -> {0, 2}, e3 -> {0: 1, 1: 1, 2: 2}: top-1 captures (1 + 1 + 2) / 8.
    assert out["pairs"]["concentration"] == [pytest.approx(0.5)]
    # Token 0 (experts 1, 3): scores e0 = 1+1, e1 = 0+1, e2 = 1+2 -> predicts {2}; its layer-1 experts {0, 2}: 1 hit.
    # Token 1 (experts 3, 0): scores e0 = 1+0, e1 = 1+1, e2 = 2+1 -> predicts {2}; experts {2, 1}: 1 hit.
    assert out["pairs"]["predictability"] == [pytest.approx(0.5)]
    # Popularity: the most loaded expert of layer 1 is e2, in both tokens' sets: 2 of 4.
    assert out["pairs"]["predictability_popularity"] == [pytest.approx(0.5)]


def _synth_stats(**kw):
    cfg = SynthConfig(**{"layers": 4, "experts": 16, "top_k": 2, "tokens": 12000, "seed": 11, "zipf": 0.8, **kw})
    meta, batches = generate(cfg)
    batches = list(batches)
    return meta, stats_from_batches(meta, batches, sample_tokens=3000, total_tokens=cfg.tokens)


def test_planted_successors_show_in_mutual_information_concentration_and_predictability():
    meta, planted = _synth_stats(affinity=0.8)
    _, control = _synth_stats(affinity=0.0)
    p, c = summarize(planted)["overall"], summarize(control)["overall"]
    assert p["mutual_information_bits_mean"] > 1.0 > 0.1 > c["mutual_information_bits_mean"]
    assert p["concentration_mean"] > c["concentration_mean"] + 0.1
    assert p["predictability_mean"] > p["predictability_popularity_mean"] + 0.25
    assert abs(c["predictability_mean"] - c["predictability_popularity_mean"]) < 0.05
    # The most frequent successor of each expert is the planted one.
    succ = np.array(meta.extra["planted"]["successor_LE"])
    top = planted.trans1_LEE.argmax(axis=2)
    assert (top == succ).mean() > 0.95


def test_planted_clusters_show_in_coactivation_and_concentration():
    meta, planted = _synth_stats(affinity=0.8, clusters=4)
    _, control = _synth_stats(affinity=0.0, clusters=4)
    cluster = np.array(meta.extra["planted"]["cluster_LE"])
    coact = planted.coact_LEE.astype(float).copy()
    for l in range(4):
        np.fill_diagonal(coact[l], -1)
    partner = coact.argmax(axis=2)
    same = np.take_along_axis(cluster, partner, axis=1) == cluster
    assert same.mean() > 0.9
    p, c = summarize(planted)["overall"], summarize(control)["overall"]
    assert p["mutual_information_bits_mean"] > c["mutual_information_bits_mean"] + 0.3
    assert p["concentration_mean"] > c["concentration_mean"] + 0.08


def test_splits_are_summarised_and_merged_stats_have_no_predictability():
    meta, b = worked_example()
    s = stats_from_batches(meta, [b], by=__import__("placer.core.stats", fromlist=["SplitBy"]).SplitBy.parse("phase"),
                           sample_tokens=10)
    out = summarize(s)
    assert list(out["splits"]) == ["prefill", "decode"]
    assert out["splits"]["prefill"]["tokens"] == 2 and out["splits"]["decode"]["tokens"] == 1
    s.sample = None
    assert "predictability" not in summarize(s)["pairs"]
