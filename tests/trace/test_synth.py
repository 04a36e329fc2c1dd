"""Synthetic traces: seeded, bounded in memory, and carrying the structure they claim."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from placer.core.trace import TraceReader
from placer.synth import SynthConfig, generate
from tests.conftest import assert_one_line_error


def _all(cfg):
    meta, batches = generate(cfg)
    from placer.core.trace import concat_batches

    return meta, concat_batches(list(batches))


def _mutual_info(a, b, n):
    joint = np.zeros((n, n))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa_, pb_ = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (pa_ @ pb_)[nz])).sum())


def test_same_seed_same_trace_other_seed_other_trace():
    cfg = SynthConfig(layers=3, experts=8, top_k=2, tokens=2000, seed=7, clusters=2)
    _, a = _all(cfg)
    _, b = _all(cfg)
    _, c = _all(SynthConfig(layers=3, experts=8, top_k=2, tokens=2000, seed=8, clusters=2))
    np.testing.assert_array_equal(a.experts_TLK, b.experts_TLK)
    np.testing.assert_array_equal(a.weights_TLK, b.weights_TLK)
    assert (a.experts_TLK != c.experts_TLK).any()


def test_every_token_picks_k_distinct_experts_with_sorted_weights():
    _, b = _all(SynthConfig(layers=5, experts=8, top_k=4, tokens=5000, zipf=2.5, seed=1))
    s = np.sort(b.experts_TLK, axis=2)
    assert (s[:, :, 1:] != s[:, :, :-1]).all()
    assert (np.diff(b.weights_TLK, axis=2) <= 1e-7).all()
    np.testing.assert_allclose(b.weights_TLK.sum(axis=2), 1.0, atol=1e-5)


def test_zipf_skews_popularity():
    _, flat = _all(SynthConfig(layers=1, experts=32, top_k=1, tokens=20000, zipf=0.0, affinity=0, seed=2))
    _, skew = _all(SynthConfig(layers=1, experts=32, top_k=1, tokens=20000, zipf=1.2, affinity=0, seed=2))
    top_share = lambda b: np.bincount(b.experts_TLK[:, 0, 0], minlength=32).max() / len(b)  # noqa: E731
    assert top_share(flat) < 0.05
    assert top_share(skew) > 0.2


def test_affinity_creates_mutual_information_between_layers():
    def mi(aff):
        _, b = _all(SynthConfig(layers=2, experts=16, top_k=1, tokens=20000, affinity=aff, zipf=0.5, seed=5))
        return _mutual_info(b.experts_TLK[:, 0, 0], b.experts_TLK[:, 1, 0], 16)

    assert mi(0.0) < 0.05
    assert mi(0.8) > 1.0


def test_planted_clusters_coactivate_and_chain():
    meta, b = _all(SynthConfig(layers=3, experts=16, top_k=2, tokens=10000, clusters=4, affinity=0.9, seed=4))
    cl = np.array(meta.extra["planted"]["cluster_LE"])
    assert cl.shape == (3, 16) and sorted(np.bincount(cl[0])) == [4, 4, 4, 4]
    ex = b.experts_TLK.astype(int)
    same_layer = (cl[0][ex[:, 0, 0]] == cl[0][ex[:, 0, 1]]).mean()
    chain = (cl[0][ex[:, 0, 0]] == cl[1][ex[:, 1, 0]]).mean()
    assert same_layer > 0.7 and chain > 0.7  # chance is 0.25


def test_domains_phases_and_drops():
    meta, b = _all(SynthConfig(layers=2, experts=8, top_k=2, tokens=4096, domains=3, seq_len=128,
                               decode_fraction=0.25, drop_rate=0.2, seed=0))
    assert set(np.unique(b.domain_T)) <= {0, 1, 2}
    assert (b.phase_T == 1).mean() == pytest.approx(0.25)
    assert b.present_TL.mean() == pytest.approx(0.8, abs=0.02)
    seq_domain = {}
    for s, d in zip(b.seq_T, b.domain_T):
        assert seq_domain.setdefault(int(s), int(d)) == int(d)  # one domain per sequence


def test_bad_options_are_one_line(cli, tmp_path):
    res = cli("synth", "-L", 2, "-E", 4, "-K", 5, "-T", 10, "--out", tmp_path / "x.parquet")
    assert_one_line_error(res, 2, "top_k (5)", "experts (4)")
    res = cli("synth", "-L", 2, "-E", 4, "-K", 1, "-T", 10, "--affinity", 1.5, "--out", tmp_path / "x.parquet")
    assert_one_line_error(res, 2, "affinity (1.5)")
    assert not (tmp_path / "x.parquet").exists()


def test_deepseek_shape_memory_is_bounded(tmp_path):
    """A DeepSeek-V3-shaped trace streams in chunks: peak memory stays far below 2 GB (tokens only add time)."""
    out = tmp_path / "ds.parquet"
    code = (
        "import resource, sys; from placer.cli.main import run; "
        f"rc = run(['-q', 'synth', '-L', '58', '-E', '256', '-K', '8', '-T', '40000', '--clusters', '8', "
        f"'--out', {str(out)!r}]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 0, res.stderr
    peak_mb = int(res.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mb < 2048, peak_mb
    r = TraceReader(out)
    assert r.meta.shape == (58, 256, 8) and r.num_tokens == 40000


def test_drift_changes_hot_experts_and_domain_mix_over_time():
    cfg = SynthConfig(layers=2, experts=32, top_k=2, tokens=40000, seed=3, domains=3, drift=0.5, drift_periods=4,
                      seq_len=100, affinity=0.0)
    meta, b = _all(cfg)
    quarter = len(b) // 4
    hot = []
    for p in range(4):
        counts = np.bincount(b.experts_TLK[p * quarter:(p + 1) * quarter, 0].ravel(), minlength=32)
        hot.append(set(np.argsort(-counts)[:4].tolist()))
        shares = np.bincount(b.domain_T[p * quarter:(p + 1) * quarter], minlength=3) / quarter
        # Each period draws its domains from its own recorded mix (100 sequences a period: loose tolerance).
        assert np.abs(shares - np.array(meta.extra["planted"]["domain_mix_PD"][p])).max() < 0.2
    assert hot[0] != hot[3]
    mixes = np.array(meta.extra["planted"]["domain_mix_PD"])
    assert mixes.shape == (4, 3) and np.abs(mixes[0] - mixes[3]).max() > 0.05


def test_without_drift_the_first_period_is_the_whole_trace():
    """drift=0 draws nothing more from the generator: the trace is the one of the same seed without drift."""
    base = SynthConfig(layers=2, experts=16, top_k=2, tokens=3000, seed=5, domains=2)
    _, a = _all(base)
    _, b = _all(SynthConfig(**{**base.__dict__, "drift_periods": 3}))
    np.testing.assert_array_equal(a.experts_TLK, b.experts_TLK)
    np.testing.assert_array_equal(a.domain_T, b.domain_T)
