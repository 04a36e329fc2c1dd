"""The stats file: round trip, merge equals concatenation, and bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.stats import load_stats, merge_stats, save_stats, stats_from_traces
from placer.core.stats.core import COUNT_FIELDS
from placer.core.trace import RoutingBatch
from tests.conftest import assert_one_line_error
from tests.stats.conftest import write_synth


def _same(a, b):
    assert a.shape == b.shape and a.tokens == b.tokens
    for name in COUNT_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert list(a.splits) == list(b.splits)
    for n in a.splits:
        _same(a.splits[n], b.splits[n])


def test_round_trip_keeps_counts_splits_and_metadata(tmp_path):
    path, meta, _ = write_synth(tmp_path / "t.parquet", drop_rate=0.1)
    s = stats_from_traces(path, by="phase")
    out = save_stats(tmp_path / "s.npz", s)
    got = load_stats(out)
    _same(s, got)
    assert got.model_name == meta.model_name
    assert got.moe_layer_indices == tuple(meta.moe_layer_indices)
    assert got.sources == (str(path),)
    assert got.extra["split_by"] == "phase"
    assert list(got.splits) == ["prefill", "decode"]
    assert got.load_LE.dtype == np.int64
    with np.load(out) as z:  # stored compactly, readable without pickle
        assert z["load_LE"].dtype == np.uint16
        assert json.loads(str(z["meta_json"]))["format_version"] == 1


def test_merge_equals_statistics_of_the_concatenated_traces(tmp_path, cli):
    (a, b), _, _ = write_synth(tmp_path / "t.parquet", tokens=5000, split_at=1800, drop_rate=0.05)
    for args in ((), ("--by", "phase")):
        assert cli("stats", a, "--out", tmp_path / "a.npz", *args).code == 0
        assert cli("stats", b, "--out", tmp_path / "b.npz", *args).code == 0
        res = cli("stats", "merge", tmp_path / "a.npz", tmp_path / "b.npz", "--out", tmp_path / "ab.npz")
        assert res.code == 0, res.err
        assert "5,000" in res.out
        assert cli("stats", a, b, "--out", tmp_path / "both.npz", *args).code == 0
        merged, both = load_stats(tmp_path / "ab.npz"), load_stats(tmp_path / "both.npz")
        _same(merged, both)
        assert merged.tokens == 5000
        # Merging is a sum: merging a file with itself doubles every count.
        twice = merge_stats([load_stats(tmp_path / "a.npz")] * 2)
        np.testing.assert_array_equal(twice.trans_LEE, 2 * load_stats(tmp_path / "a.npz").trans_LEE)


def test_merge_refuses_other_shapes_and_other_versions(tmp_path, cli):
    a, _, _ = write_synth(tmp_path / "a.parquet")
    c, _, _ = write_synth(tmp_path / "c.parquet", experts=8)
    save_stats(tmp_path / "a.npz", stats_from_traces(a))
    save_stats(tmp_path / "c.npz", stats_from_traces(c))
    res = cli("stats", "merge", tmp_path / "a.npz", tmp_path / "c.npz", "--out", tmp_path / "m.npz")
    assert_one_line_error(res, 2, "c.npz", "(4, 8, 2) differs", "(4, 16, 2)")
    assert not (tmp_path / "m.npz").exists()

    # A stats file of another format version.
    with np.load(tmp_path / "a.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta_json"]))
    meta["format_version"] = 2
    arrays["meta_json"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "v2.npz", **arrays)
    res = cli("stats", "merge", tmp_path / "a.npz", tmp_path / "v2.npz", "--out", tmp_path / "m.npz")
    assert_one_line_error(res, 2, "v2.npz", "format_version is 2", "version 1")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("make,fragments", [
    (lambda p: p.write_bytes(b"not a zip"), ("not a moeplace stats file",)),
    (lambda p: np.savez(p, load_LE=np.zeros((2, 2))), ("no 'meta_json'",)),
    (lambda p: np.savez(p, meta_json=np.array("{")), ("meta_json is not valid JSON",)),
    (lambda p: np.savez(p, meta_json=np.array(json.dumps({"format": "other"}))), ("format is 'other'",)),
    (lambda p: np.savez(p, meta_json=np.array(json.dumps(
        {"format": "moeplace-stats", "format_version": 1, "num_layers": 2, "num_experts": 3, "top_k": 1,
         "arrays": ["load_LE"]})), load_LE=np.zeros((2, 4), np.int64)), ("'load_LE' has shape [2, 4]", "[2, 3]")),
])
def test_bad_stats_files_are_one_line_errors(tmp_path, cli, make, fragments):
    bad = tmp_path / "bad.npz"
    make(bad)
    res = cli("stats", "merge", bad, "--out", tmp_path / "m.npz")
    assert_one_line_error(res, 2, "bad.npz", *fragments)


def test_merging_load_only_with_full_statistics_keeps_loads_and_says_so(tmp_path):
    a, _, _ = write_synth(tmp_path / "a.parquet")
    full = stats_from_traces(a)
    from placer.core.stats import RoutingStats

    loads = RoutingStats(4, 16, 2, load_LE=full.load_LE.copy(), sources=("loads.npy",))
    m = merge_stats([full, loads])
    assert m.load_only
    np.testing.assert_array_equal(m.load_LE, 2 * full.load_LE)
    assert any("loads only" in n for n in m.extra["notes"])


def test_window_split_counts_consecutive_tokens_in_trace_order(tmp_path):
    """--by window:N: window w holds tokens wN .. (w+1)N - 1 in trace order, across batch boundaries; each
    window's counts are the statistics of that slice alone."""
    from placer.core.stats import stats_from_batches

    path, meta, b = write_synth(tmp_path / "t.parquet", tokens=2500)
    s = stats_from_traces(path, by="window:1000", batch_size=300)
    assert list(s.splits) == ["tokens 0-999", "tokens 1000-1999", "tokens 2000-2999"]
    assert [p.tokens for p in s.splits.values()] == [1000, 1000, 500]
    for w, part in enumerate(s.splits.values()):
        rows = slice(w * 1000, (w + 1) * 1000)
        ref = stats_from_batches(meta, [RoutingBatch(experts_TLK=b.experts_TLK[rows], present_TL=None)])
        for name in COUNT_FIELDS:
            np.testing.assert_array_equal(getattr(part, name), getattr(ref, name), err_msg=f"window {w} {name}")
