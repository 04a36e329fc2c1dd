"""Property-based tests of the readers and of placement validation: whatever the bytes or values, a reader
returns something valid or raises ``InputError``; never another exception, never statistics that break the
identities of exact counts."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from placer.core.errors import InputError
from placer.core.placement import Placement
from placer.core.placement_io import load_placement, placement_from_dict, placement_to_dict
from placer.core.stats.loadonly import load_only_stats
from placer.core.stats.stream import stats_from_traces
from placer.core.trace.reader import TraceReader
from placer.core.trace.schema import TraceMeta

# Loaded machine: no deadline; few examples each (the whole file runs in seconds).
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.integers(min_value=-3, max_value=9)
weights = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(0.5))


@st.composite
def routing(draw):
    """A small trace's arrays, with ids out of range, repeated experts, NaN, infinite, negative and huge
    weights, missing layers."""
    L, E, K = draw(st.integers(1, 3)), draw(st.integers(2, 6)), draw(st.integers(1, 2))
    T = draw(st.integers(1, 6))
    ex = np.array(draw(st.lists(ids, min_size=T * L * K, max_size=T * L * K))).reshape(T, L, K)
    w = np.array(draw(st.lists(weights, min_size=T * L * K, max_size=T * L * K)), dtype=np.float32).reshape(T, L, K)
    present = np.array(draw(st.lists(st.booleans(), min_size=T * L, max_size=T * L))).reshape(T, L)
    with_present = draw(st.booleans())
    return (L, E, K), ex, w, present if with_present else None


def _write(path: Path, shape, ex, w, present) -> None:
    L, E, K = shape
    T = len(ex)
    id_type = pa.int16()  # signed: negative ids can be stored
    fields = [pa.field("seq_id", pa.int64()), pa.field("position", pa.int32()), pa.field("phase", pa.int8()),
              pa.field("experts", pa.list_(id_type, L * K)), pa.field("weights", pa.list_(pa.float32(), L * K))]
    cols = [pa.array(np.zeros(T, np.int64)), pa.array(np.arange(T, dtype=np.int32)), pa.array(np.zeros(T, np.int8)),
            pa.FixedSizeListArray.from_arrays(pa.array(ex.reshape(-1).astype(np.int16)), L * K),
            pa.FixedSizeListArray.from_arrays(pa.array(w.reshape(-1)), L * K)]
    if present is not None:
        fields.append(pa.field("present", pa.list_(pa.bool_(), L)))
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(present.reshape(-1)), L))
    meta = TraceMeta(L, E, K).to_json().encode()
    pq.write_table(pa.table(cols, schema=pa.schema(fields, metadata={b"moeplace": meta})), path)


def _valid(shape, ex, w, present) -> bool:
    """What the trace format allows, stated independently of the reader: where a token is present, ids in
    [0, E), no expert twice in a layer, weights finite, >= 0 and within float16."""
    L, E, K = shape
    pres = np.ones((len(ex), L), bool) if present is None else present
    for t in range(len(ex)):
        for l in range(L):
            if not pres[t, l]:
                continue
            row = ex[t, l]
            if row.min() < 0 or row.max() >= E or len(set(row.tolist())) != K:
                return False
            if not all(np.isfinite(v) and 0 <= v <= 65504 for v in w[t, l]):
                return False
    return True


@SETTINGS
@given(routing())
def test_trace_reader_gives_valid_statistics_or_an_input_error(case):
    shape, ex, w, present = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.parquet"
        _write(path, shape, ex, w, present)
        try:
            TraceReader(path).read_all()
            stats = stats_from_traces([path])
        except InputError:
            assert not _valid(shape, ex, w, present)
            return
    assert _valid(shape, ex, w, present)
    assert stats.inconsistency() is None
    L, E, K = shape
    pres = np.ones((len(ex), L), bool) if present is None else present
    np.testing.assert_array_equal(stats.tokens_L, pres.sum(axis=0))


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".parquet", ".npy", ".csv", ".pt", ".json", ".npz"]))
def test_readers_of_arbitrary_bytes_raise_only_input_errors(data, suffix):
    from placer.core.stats.io import load_stats

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x{suffix}"
        path.write_bytes(data)
        read = {".parquet": TraceReader, ".npz": load_stats}.get(suffix, load_only_stats)
        try:
            read(path)
        except InputError:
            pass


numbers = st.one_of(st.integers(-5, 2 ** 64), st.floats(allow_nan=True, allow_infinity=True), st.just(3))


@SETTINGS
@given(st.lists(st.lists(numbers, min_size=1, max_size=4), min_size=1, max_size=4),
       st.sampled_from([".csv", ".json", ".npy", ".pt"]), st.booleans())
def test_load_readers_give_loads_or_an_input_error(rows, suffix, bom):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"load{suffix}"
        if suffix == ".csv":
            path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "\n".join(",".join(map(str, r)) for r in rows).encode())
        elif suffix == ".json":
            path.write_text(json.dumps({"logical_count": rows}))
        else:
            try:
                arr = np.array(rows, dtype=np.float64)
            except (ValueError, OverflowError):
                return  # ragged: not an array NumPy or torch could hold
            if suffix == ".npy":
                np.save(path, arr)
            else:
                import torch

                torch.save(torch.tensor(arr), path)
        try:
            s = load_only_stats(path)
        except InputError:
            return
    width = {len(r) for r in rows}
    assert len(width) == 1, "a ragged matrix was accepted"
    load = s.load_LE
    assert load.ndim == 2 and load.shape[1] == width.pop()
    assert np.isfinite(load).all() and (load >= 0).all()
    if not s.real_valued:
        assert load.dtype == np.int64 and float(load.sum()) < 2 ** 53
    assert s.inconsistency() is None


@st.composite
def edited_placement(draw):
    """A valid placement's JSON with random edits of phy2log (ids huge, negative, fractional; rows resized)
    and of its counts."""
    E, G = 4, 2
    doc = placement_to_dict(Placement(np.tile(np.arange(E), (2, 1)), num_gpus=G, num_experts=E))
    rows = doc["phy2log"]
    for _ in range(draw(st.integers(0, 3))):
        l = draw(st.integers(0, len(rows) - 1))
        kind = draw(st.sampled_from(["id", "drop", "add", "count"]))
        if kind == "id" and rows[l]:
            rows[l][draw(st.integers(0, len(rows[l]) - 1))] = draw(
                st.one_of(st.integers(-2, 6), st.integers(2 ** 62, 10 ** 30), st.floats(allow_nan=False, width=16)))
        elif kind == "drop" and rows[l]:
            rows[l].pop()
        elif kind == "add":
            rows[l].append(draw(st.integers(0, 5)))
        else:
            key = draw(st.sampled_from(["num_gpus", "num_experts", "num_nodes", "num_slots", "slots_per_gpu"]))
            doc[key] = draw(st.integers(-1, 10 ** 20))
    return doc


@SETTINGS
@given(edited_placement())
def test_placement_validation_gives_a_placement_or_an_input_error(doc):
    try:
        p = placement_from_dict(json.loads(json.dumps(doc)), where="p.json")
    except InputError as exc:
        assert str(exc).startswith("p.json")
        return
    # Accepted: it is a placement, every expert has a slot, ids are in range, GPUs share slots evenly.
    phy = p.phy2log_LP
    assert phy.min() >= 0 and phy.max() < p.num_experts
    assert all(set(range(p.num_experts)) <= set(row.tolist()) for row in phy)
    assert phy.shape[1] % p.num_gpus == 0


def test_load_placement_of_a_non_object(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="p.json"):
        load_placement(path)
