"""The Parquet trace format: round trips, streaming, atomic writes, and every kind of bad file."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from placer.core.trace import RoutingBatch, TraceDataset, TraceMeta, TraceReader, TraceWriter, expert_dtype, write_trace
from placer.synth import SynthConfig, generate
from tests.conftest import assert_one_line_error


def _synth(tmp_path, name="t.parquet", **kw):
    cfg = SynthConfig(**{"layers": 4, "experts": 16, "top_k": 2, "tokens": 3000, "seed": 3, "domains": 2, **kw})
    meta, batches = generate(cfg)
    batches = list(batches)
    path = tmp_path / name
    with TraceWriter(path, meta, with_domain=True, with_present=cfg.drop_rate > 0, row_group_size=1000) as w:
        for b in batches:
            w.write(b)
    return path, meta, batches


def test_round_trip_equals_what_was_written(tmp_path):
    path, meta, batches = _synth(tmp_path, drop_rate=0.1)
    r = TraceReader(path)
    assert r.meta.shape == meta.shape == (4, 16, 2)
    assert r.meta.extra["synth"]["seed"] == 3
    got = r.read_all()
    want = batches[0]
    assert got.experts_TLK.dtype == np.uint8
    np.testing.assert_array_equal(got.experts_TLK[got.present_TL], want.experts_TLK[want.present_TL])
    np.testing.assert_array_equal(got.present_TL, want.present_TL)
    np.testing.assert_allclose(got.weights_TLK[got.present_TL], want.weights_TLK[want.present_TL], atol=1e-3)
    for name in ("seq_T", "position_T", "phase_T", "domain_T"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert got.token_T is None


def test_streaming_reads_in_batches_of_whole_tokens(tmp_path):
    path, _, batches = _synth(tmp_path)
    r = TraceReader(path)
    parts = list(r.iter_batches(batch_size=700, fields=("experts", "seq")))
    assert [len(p) for p in parts] == [700, 700, 700, 700, 200]
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # row groups of 1000 tokens
    assert sum(len(p) for p in parts) == 3000
    assert all(p.weights_TLK is None and p.present_TL is None for p in parts)
    full = np.concatenate([p.experts_TLK for p in parts])
    np.testing.assert_array_equal(full, batches[0].experts_TLK)


def test_dataset_reads_several_files_and_refuses_mixed_shapes(tmp_path):
    a, _, _ = _synth(tmp_path, "a.parquet")
    b, _, _ = _synth(tmp_path, "b.parquet", seed=4)
    ds = TraceDataset([a, b])
    assert ds.num_tokens == 6000
    assert TraceDataset(tmp_path).num_tokens == 6000
    c, _, _ = _synth(tmp_path / "other", "c.parquet", experts=8)
    with pytest.raises(Exception, match=r"shape .* \(4, 8, 2\) differs"):
        TraceDataset([a, c])


def test_ids_use_the_smallest_integer_type():
    assert expert_dtype(256) == np.uint8
    assert expert_dtype(257) == np.uint16
    assert expert_dtype(70000) == np.uint32


def test_uint16_ids_round_trip(tmp_path):
    meta = TraceMeta(num_layers=2, num_experts=300, top_k=3)
    ex = np.array([[[299, 0, 7], [1, 2, 3]]] * 5)
    path = write_trace(tmp_path / "w.parquet", meta, RoutingBatch(experts_TLK=ex))
    got = TraceReader(path).read_all()
    assert got.experts_TLK.dtype == np.uint16
    np.testing.assert_array_equal(got.experts_TLK, ex)
    np.testing.assert_allclose(got.weights_TLK, 1 / 3, atol=1e-3)  # no weights given: 1/K


def test_column_encodings_and_statistics(tmp_path):
    """Dictionary encoding for every column but the weights, statistics for the scalar columns only: the
    Arrow schema (what every reader sees) is the same, and files written with pyarrow's defaults still read."""
    path, meta, batches = _synth(tmp_path, drop_rate=0.1)
    md = pq.ParquetFile(path).metadata.row_group(0)
    cols = {md.column(i).path_in_schema.split(".")[0]: md.column(i) for i in range(md.num_columns)}
    assert set(cols) == {"seq_id", "position", "phase", "domain", "experts", "weights", "present"}
    for name, col in cols.items():
        assert ("RLE_DICTIONARY" in col.encodings) == (name not in ("weights", "present")), name  # bools: bits
        assert col.is_stats_set == (name not in ("experts", "weights", "present")), name
    old = tmp_path / "defaults.parquet"  # as the writer wrote before: pyarrow's default options
    pq.write_table(pq.read_table(path), old, compression="zstd", row_group_size=1000)
    a, b = TraceReader(path).read_all(), TraceReader(old).read_all()
    for name in ("experts_TLK", "weights_TLK", "present_TL", "seq_T", "position_T", "phase_T", "domain_T"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_absent_weights_are_one_over_k_in_batches_of_any_size(tmp_path):
    meta = TraceMeta(num_layers=3, num_experts=8, top_k=2)
    ex = np.tile(np.array([[0, 1], [2, 3], [4, 5]], dtype=np.uint8), (50, 1, 1))
    path = tmp_path / "w.parquet"
    with TraceWriter(path, meta, row_group_size=16) as w:  # the 1/K column is built once, then sliced
        for lo, hi in ((0, 5), (5, 45), (45, 46), (46, 50)):
            w.write(RoutingBatch(experts_TLK=ex[lo:hi]))
    got = TraceReader(path).read_all()
    np.testing.assert_array_equal(got.experts_TLK, ex)
    assert got.weights_TLK.shape == (50, 3, 2) and np.all(got.weights_TLK == np.float32(np.float16(0.5)))


def test_a_trace_without_weights_reads_as_one_over_k(tmp_path, cli):
    """Schema version 2: the weights column left out (the source returned none) reads exactly as a version-1
    file that stores 1/K; a file with weights is still stamped version 1, so older readers read it."""
    meta = TraceMeta(num_layers=3, num_experts=8, top_k=2)
    ex = np.tile(np.array([[0, 1], [2, 3], [4, 5]], dtype=np.uint8), (40, 1, 1))
    with TraceWriter(tmp_path / "v1.parquet", meta, row_group_size=16) as w:
        w.write(RoutingBatch(experts_TLK=ex))
    with TraceWriter(tmp_path / "v2.parquet", meta, row_group_size=16, with_weights=False) as w:
        w.write(RoutingBatch(experts_TLK=ex))
        with pytest.raises(Exception, match="opened without 'weights'"):
            w.write(RoutingBatch(experts_TLK=ex, weights_TLK=np.ones((40, 3, 2), np.float32)))
    r1, r2 = TraceReader(tmp_path / "v1.parquet"), TraceReader(tmp_path / "v2.parquet")
    assert (r1.meta.schema_version, r1.has_weights) == (1, True)
    assert (r2.meta.schema_version, r2.has_weights) == (2, False)
    assert "weights" not in pq.read_schema(tmp_path / "v2.parquet").names
    a, b = r1.read_all(), r2.read_all()
    assert b.weights_TLK.dtype == np.float32
    np.testing.assert_array_equal(a.weights_TLK, b.weights_TLK)
    np.testing.assert_array_equal(a.experts_TLK, b.experts_TLK)
    parts = list(r2.iter_batches(batch_size=7, fields=("experts", "weights")))
    assert all(p.weights_TLK.shape == (len(p), 3, 2) for p in parts)
    assert all(p.weights_TLK is None for p in r2.iter_batches(fields=("experts",)))
    res = cli("info", tmp_path / "v2.parquet", "--json")
    assert res.code == 0 and json.loads(res.out)["gate_weights"].startswith("absent")
    assert json.loads(cli("info", tmp_path / "v1.parquet", "--json").out)["gate_weights"] == "stored"


def test_facts_known_at_the_close_join_the_metadata(tmp_path):
    meta = TraceMeta(num_layers=1, num_experts=4, top_k=1, extra={"engine": "vllm", "n": 1})
    w = TraceWriter(tmp_path / "f.parquet", meta)
    w.write(RoutingBatch(experts_TLK=np.zeros((3, 1, 1), dtype=np.uint8)))
    w.close(final_extra={"failed_requests": [{"prompt": "p.jsonl:2", "reason": "HTTP 500"}], "n": 2})
    assert w.meta.extra["n"] == 2
    got = TraceReader(tmp_path / "f.parquet").meta.extra
    assert got == {"engine": "vllm", "n": 2, "failed_requests": [{"prompt": "p.jsonl:2", "reason": "HTTP 500"}]}


def test_failed_write_leaves_nothing_behind(tmp_path):
    out = tmp_path / "keep.parquet"
    out.write_bytes(b"the user's old file")
    meta = TraceMeta(num_layers=2, num_experts=4, top_k=1)
    with pytest.raises(RuntimeError):
        with TraceWriter(out, meta, row_group_size=1) as w:
            w.write(RoutingBatch(experts_TLK=np.zeros((3, 2, 1), dtype=np.uint8)))
            raise RuntimeError("crash half way")
    assert out.read_bytes() == b"the user's old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.parquet"]


def test_an_empty_trace_is_never_written(tmp_path):
    from placer.core.errors import InputError

    with pytest.raises(InputError, match="no tokens"):
        with TraceWriter(tmp_path / "e.parquet", TraceMeta(num_layers=1, num_experts=2, top_k=1)):
            pass
    assert list(tmp_path.iterdir()) == []


# -- bad input, through the command line ---------------------------------------------------------------
def _rewrite(src, dst, *, meta=None, table_fn=None):
    t = pq.read_table(src)
    if table_fn is not None:
        t = table_fn(t)
    md = dict(t.schema.metadata or {})
    if meta is not None:
        md[b"moeplace"] = json.dumps(meta).encode()
    pq.write_table(t.replace_schema_metadata(md), dst)


def test_bad_files(tmp_path, cli):
    good, meta, _ = _synth(tmp_path)
    res = cli("info", tmp_path / "missing.parquet")
    assert_one_line_error(res, 2, "missing.parquet", "not found")

    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet")
    assert_one_line_error(cli("info", junk), 2, "junk.parquet", "not a readable Parquet file")

    trunc = tmp_path / "trunc.parquet"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_error(cli("info", trunc), 2, "trunc.parquet")

    md = json.loads(pq.read_schema(good).metadata[b"moeplace"])
    v3 = tmp_path / "v3.parquet"
    _rewrite(good, v3, meta={**md, "schema_version": 3})
    assert_one_line_error(cli("info", v3), 2, "v3.parquet", "schema_version is 3", "reads versions 1, 2")

    noweights = tmp_path / "now.parquet"  # a version-1 file must have the weights column
    _rewrite(good, noweights, table_fn=lambda t: t.drop_columns(["weights"]))
    assert_one_line_error(cli("info", noweights), 2, "now.parquet", "column 'weights' is missing")

    nometa = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), nometa)
    assert_one_line_error(cli("info", nometa), 2, "plain.parquet", "not a moeplace trace")

    wide = tmp_path / "wide.parquet"
    _rewrite(good, wide, meta={**md, "top_k": 3})
    assert_one_line_error(cli("info", wide), 2, "wide.parquet", "'experts'", "hold 8 values", "4*3 = 12")

    small_e = tmp_path / "e.parquet"
    _rewrite(good, small_e, meta={**md, "num_experts": 4})
    assert_one_line_error(cli("info", small_e), 2, "e.parquet", "'experts'", "row ", "outside [0, 4)")

    empty = tmp_path / "empty.parquet"
    _rewrite(good, empty, table_fn=lambda t: t.slice(0, 0))
    assert_one_line_error(cli("info", empty), 2, "empty.parquet", "no tokens")

    nocol = tmp_path / "nocol.parquet"
    _rewrite(good, nocol, table_fn=lambda t: t.drop_columns(["seq_id"]))
    assert_one_line_error(cli("info", nocol), 2, "nocol.parquet", "column 'seq_id' is missing")

    badfinal = tmp_path / "final.parquet"  # the footer's moeplace.extra (facts known at the close) must be JSON
    t = pq.read_table(good)
    with pq.ParquetWriter(badfinal, t.schema) as w:
        w.write_table(t)
        w.add_key_value_metadata({"moeplace.extra": "[1, 2"})
    assert_one_line_error(cli("info", badfinal), 2, "final.parquet", "'moeplace.extra' is not valid JSON")

    badlayers = tmp_path / "ml.parquet"
    _rewrite(good, badlayers, meta={**md, "num_layers": "four"})
    assert_one_line_error(cli("info", badlayers), 2, "ml.parquet", "num_layers", "'four'")


def test_info_json_contract(tmp_path, cli):
    path, _, _ = _synth(tmp_path, drop_rate=0.05)
    res = cli("info", path, "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    for key, value in (("num_layers", 4), ("num_experts", 16), ("top_k", 2), ("tokens", 3000)):
        assert d[key] == value and type(d[key]) is int
    assert d["sequences"] == 12  # 3000 tokens in sequences of 256
    assert d["phases"]["prefill"] + d["phases"]["decode"] == 3000
    assert 0 < d["missing_token_layers"] == sum(d["missing_per_layer"])
    res = cli("info", path)
    assert res.code == 0 and "missing token-layers" in res.out


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

    from placer.core.fileio import write_text_atomic

    umask = os.umask(0o022)
    try:
        path, _, _ = _synth(tmp_path)
        txt = write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert oct(txt.stat().st_mode & 0o777) == oct(0o644)
