"""``moeplace bench stats`` on a small trace: it runs, the pandas baseline counts the same, ratios are reported."""

from __future__ import annotations

import json

import numpy as np

from placer.bench.stats import pandas_counts
from tests.stats.conftest import loop_counts, random_batch


def test_pandas_baseline_counts_what_the_definitions_say():
    b = random_batch(120, 3, 6, 2, seed=9, drop=0.2)
    got = pandas_counts(b.experts_TLK, b.present_TL, 6, chunk=50)
    for name, want in loop_counts(b.experts_TLK, b.present_TL, 6).items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_bench_stats_small_run(tmp_path, cli):
    res = cli("bench", "stats", "--tokens", "3000", "-L", "4", "-E", "16", "-K", "2", "--pandas-tokens", "800",
              "--workdir", tmp_path, "--json")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["shape"] == [4, 16, 2] and out["fast_trace"]["tokens"] == 3000
    assert out["fast_trace"]["entries"] == 3000 * 4 * 2
    assert out["counts_equal"] is True and out["sample_tokens"] == 800
    assert out["pandas"]["entries"] == 800 * 4 * 2
    assert out["speedup_same_data"] > 0 and out["fast_trace"]["peak_rss_mb"] > 0
