"""``moeplace stats --engine dask``: shards counted on Dask workers give the single-process statistics bit for
bit; a worker that dies is retried on its shard; a shard that fails twice is named and nothing is written.

The cluster tests share one local cluster of two worker processes (joined with ``--address``, as a user's
cluster would be) and one test starts and stops its own (no ``--address``)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from placer.core.errors import InputError, MoeplaceError
from placer.core.stats import load_stats, stats_from_traces
from placer.core.stats.stream import count_fields, parse_split, sample_stride
from placer.core.trace.reader import TraceDataset
from placer.scale import Fault, distributed_stats, plan_shards
from placer.scale.shards import CountJob, count_shard, merge_counts
from tests.conftest import assert_one_line_error
from tests.stats.conftest import write_synth

distributed = pytest.importorskip("distributed")


def assert_same_stats(got, want) -> None:
    """Every count, the metadata, the splits (in order) and the token sample are equal."""
    for name in ("num_layers", "num_experts", "top_k", "tokens", "model_name", "moe_layer_indices", "sources", "extra"):
        assert getattr(got, name) == getattr(want, name), name
    assert list(got.counts()) == list(want.counts())
    for name, a in want.counts().items():
        np.testing.assert_array_equal(getattr(got, name), a, err_msg=name)
        assert getattr(got, name).dtype == a.dtype
    assert list(got.splits) == list(want.splits)
    for n in want.splits:
        assert_same_stats(got.splits[n], want.splits[n])
    assert (got.sample is None) == (want.sample is None)
    if want.sample is not None:
        np.testing.assert_array_equal(got.sample.experts_TLK, want.sample.experts_TLK)
        np.testing.assert_array_equal(got.sample.present_or_ones(), want.sample.present_or_ones())


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Two files (2,000 and 3,000 tokens, row groups of 1,000, missing token-layers, two domains)."""
    d = tmp_path_factory.mktemp("shards")
    (a, b), _, _ = write_synth(d / "t.parquet", tokens=5000, split_at=2000, drop_rate=0.1)
    return [a, b]


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster of two worker processes that gives up on a task at the first worker death
    (as ``moeplace stats --engine dask`` configures its own); yields its scheduler address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      scheduler_kwargs={"allowed_failures": 0}, silence_logs=logging.CRITICAL) as c:
        yield c.scheduler_address


# -- planning and merging, in this process ---------------------------------------------------------------

def test_shards_are_files_or_row_group_ranges(traces):
    ds = TraceDataset(traces)
    whole = plan_shards(ds, None)
    assert [(s.source, s.first_token, s.tokens, s.whole_file) for s in whole] == [
        (str(traces[0]), 0, 2000, True), (str(traces[1]), 2000, 3000, True)]
    cut = plan_shards(ds, 2500)
    assert [(s.row_groups, s.first_token, s.tokens) for s in cut] == [
        (range(0, 2), 0, 2000), (range(0, 2), 2000, 2000), (range(2, 3), 4000, 1000)]
    assert cut[2].describe() == f"shard 3 of 3 ({traces[1]}, row group 2)"
    assert [s.tokens for s in plan_shards(ds, 1)] == [1000] * 5  # a row group is never cut
    with pytest.raises(InputError, match="--shard-tokens 0"):
        plan_shards(ds, 0)


@pytest.mark.parametrize("by", [None, "phase", "domain", "window:1500"])
def test_shards_merged_in_any_order_equal_the_single_pass(traces, by):
    """The worker functions, run here: every shard counted alone, merged in scrambled orders and tree shapes."""
    want = stats_from_traces(traces, by=by, sample_tokens=700)
    ds = TraceDataset(traces)
    split = parse_split(by)
    job = CountJob(meta=ds.meta, by=split, sample_stride=sample_stride(ds.num_tokens, 700),
                   fields=tuple(count_fields(ds, split)), batch_size=300)
    counted = [count_shard(s, job) for s in plan_shards(ds, 1000)]
    for order in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        parts = [counted[i] for i in order]
        while len(parts) > 1:  # pairwise, as the cluster's tree does
            parts = [merge_counts(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
        assert_same_stats(parts[0].result(sources=[str(p) for p in traces]), want)
    # Merging leaves its inputs unchanged (a retried merge reads them again).
    before = counted[0].counters[min(counted[0].counters)].load_LE.copy()
    merge_counts(counted[0], counted[1])
    np.testing.assert_array_equal(counted[0].counters[min(counted[0].counters)].load_LE, before)


# -- on a cluster ------------------------------------------------------------------------------------------

def test_cli_on_a_cluster_equals_the_single_process_bit_for_bit(tmp_path, cli, traces, cluster):
    single = cli("stats", *traces, "--by", "phase", "--out", tmp_path / "single.npz", "--json")
    assert single.code == 0, single.err
    dist = cli("stats", *traces, "--by", "phase", "--out", tmp_path / "dask.npz", "--json", "--engine", "dask",
               "--address", cluster, "--workers", "2", "--shard-tokens", "1000")
    assert dist.code == 0, dist.err
    # The printed summary (predictability included: the same token sample) and the stats file are equal.
    assert json.loads(dist.out) == {**json.loads(single.out), "written": {"stats": str(tmp_path / "dask.npz")}}
    a, b = np.load(tmp_path / "single.npz"), np.load(tmp_path / "dask.npz")
    assert a.files == b.files
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        assert a[name].dtype == b[name].dtype
    assert_same_stats(load_stats(tmp_path / "dask.npz"), load_stats(tmp_path / "single.npz"))


def test_a_worker_that_dies_is_retried_on_its_shard(tmp_path, capsys, traces, cluster):
    want = stats_from_traces(traces, by="domain")
    got = distributed_stats(traces, address=cluster, by="domain", shard_tokens=1000,
                            fault=Fault(shard=2, kind="exit", times=1, marker_dir=str(tmp_path)))
    assert_same_stats(got, want)
    err = capsys.readouterr().err
    assert f"warning: shard 3 of 5 ({traces[1]}, row group 0) failed (its worker died); retrying" in err
    assert "shard 1 " not in err and "shard 2 " not in err  # no other shard was charged for it


def test_a_shard_that_fails_twice_is_named(tmp_path, traces, cluster):
    for kind, cause in (("exit", "its worker died"), ("raise", "RuntimeError: injected failure of shard 4")):
        marks = tmp_path / kind
        marks.mkdir()
        with pytest.raises(MoeplaceError) as err:
            distributed_stats(traces, address=cluster, shard_tokens=1000,
                              fault=Fault(shard=3, kind=kind, times=2, marker_dir=str(marks)))
        msg = str(err.value)
        assert "\n" not in msg and not isinstance(err.value, InputError)
        assert msg.startswith(f"shard 4 of 5 ({traces[1]}, row group 1) failed 2 times, nothing written"), msg
        assert msg.endswith(cause + " (attempt 2)" if kind == "raise" else cause), msg


def _with_bad_expert(src, dst, row: int) -> int:
    """A copy of trace ``src`` whose first token from ``row`` on that is present at layer 0 routes to expert
    99 there (outside [0, 16)); returns that token's row."""
    t = pq.read_table(src)
    present = t.column("present").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(t.num_rows, -1)
    row = row + int(np.argmax(present[row:, 0]))
    col = t.column("experts").combine_chunks()
    values = col.flatten().to_numpy().copy()
    values[row * col.type.list_size] = 99
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(values, type=col.type.value_type), type=col.type)
    pq.write_table(t.set_column(t.schema.get_field_index("experts"), t.schema.field("experts"), fixed), dst,
                   row_group_size=1000)
    return row


def test_cli_names_a_bad_shard_and_writes_nothing(tmp_path, cli, traces, cluster):
    bad = tmp_path / "bad.parquet"
    row = _with_bad_expert(traces[1], bad, row=2500)
    out = tmp_path / "s.npz"
    res = cli("stats", traces[0], bad, "--engine", "dask", "--address", cluster, "--shard-tokens", "1000",
              "--out", out)
    assert res.code == 2, res.err
    lines = [l for l in res.err.splitlines() if l.strip()]
    assert [l for l in lines if "error" in l] == [lines[-1]] and "Traceback" not in res.err
    assert lines[-1].startswith(f"moeplace: error: shard 5 of 5 ({bad}, row group 2) failed 2 times, nothing written")
    assert f"{bad}: column 'experts': row {row}, layer 0, rank 0 holds expert id 99, outside [0, 16)" in lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


def test_cli_starts_and_stops_a_local_cluster(tmp_path, cli, traces):
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    res = cli("stats", *traces, "--engine", "dask", "--workers", "1", "--out", tmp_path / "s.npz")
    assert res.code == 0, res.err
    assert_same_stats(load_stats(tmp_path / "s.npz"), load_stats_of(traces, tmp_path))
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())]
    assert not left, [p.cmdline() for p in left]


def load_stats_of(traces, tmp_path):
    from placer.core.stats import save_stats

    save_stats(tmp_path / "single.npz", stats_from_traces(traces))
    return load_stats(tmp_path / "single.npz")


# -- usage errors ------------------------------------------------------------------------------------------

def test_engine_usage_errors(tmp_path, cli, traces, monkeypatch):
    a = traces[0]
    assert_one_line_error(cli("stats", a, "--engine", "ray"), 2, "--engine ray is not supported", "--engine dask")
    assert_one_line_error(cli("stats", a, "--engine", "spark"), 2, "--engine 'spark'", "dask")
    assert_one_line_error(cli("stats", a, "--workers", "2"), 2, "--workers is for distributed counting")
    assert_one_line_error(cli("stats", a, "--address", "tcp://x:1"), 2, "--address is for distributed counting")
    assert_one_line_error(cli("stats", a, "--engine", "dask", "--workers", "0"), 2, "--workers 0")
    assert_one_line_error(cli("stats", a, "--engine", "dask", "--shard-tokens", "0"), 2, "--shard-tokens 0")
    assert cli("stats", a, "--out", tmp_path / "a.npz").code == 0
    assert_one_line_error(cli("stats", tmp_path / "a.npz", "--engine", "dask"), 2, "counts traces, and none is given")
    import placer.scale.dask_runner as runner

    monkeypatch.setattr(runner, "CONNECT_TIMEOUT_S", 1)
    assert_one_line_error(cli("stats", a, "--engine", "dask", "--address", "tcp://127.0.0.1:9", "--out",
                              tmp_path / "x.npz"), 2, "--address tcp://127.0.0.1:9: cannot reach a dask scheduler")
    assert not (tmp_path / "x.npz").exists()


def test_help_shows_the_distributed_options(cli):
    res = cli("stats", "compute", "--help")
    assert res.code == 0
    for fragment in ("--engine", "--address", "--workers", "--shard-tokens", "moeplace[dask]", "docs/scale.md"):
        assert fragment in res.out, fragment

