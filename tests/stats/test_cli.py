"""``moeplace stats``: the command line, its outputs and its errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from placer.core.stats import load_stats, stats_from_traces
from placer.core.trace import TraceMeta
from placer.core.trace.schema import arrow_schema
from tests.conftest import assert_one_line_error
from tests.stats.conftest import write_synth


def test_help_explains_both_forms(cli):
    res = cli("stats", "--help")
    assert res.code == 0
    for fragment in ("TRACE... --out stats.npz", "merge a.npz b.npz --out all.npz", "--load FILE", "compute"):
        assert fragment in res.out, fragment
    res = cli("stats", "compute", "--help")
    assert res.code == 0 and "--by" in res.out and "--graph" in res.out


def test_stats_json_graph_plots_and_file(tmp_path, cli, synth_trace):
    path, meta, b = synth_trace
    res = cli("stats", path, "--out", tmp_path / "s.npz", "--json", "--by", "domain", "--graph", tmp_path / "g.graphml",
              "--plots", tmp_path / "plots", "--plot-layers", "1")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["tokens"] == 4000 and out["num_layers"] == 4 and out["top_m"] == 2
    assert out["split_by"] == "domain" and set(out["splits"]) <= {"domain 0", "domain 1"}
    assert sum(v["tokens"] for v in out["splits"].values()) == 4000
    assert len(out["pairs"]["mutual_information_bits"]) == 3
    assert 0 < out["overall"]["predictability_mean"] <= 1
    assert sorted(out["written"]) == [str(tmp_path / "g.graphml"), "plots", "stats"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["coactivation_L1.png", "load.png", "transitions_L1.png"]
    s = load_stats(tmp_path / "s.npz")
    assert s.tokens == 4000 and set(s.splits) == set(out["splits"])
    # The same statistics as the library call, and the table form prints the headline figures.
    np.testing.assert_array_equal(s.trans_LEE, stats_from_traces(path).trans_LEE)
    res = cli("stats", path, "--top-m", "3")
    assert res.code == 0, res.err
    for fragment in ("4,000", "mutual information", "concentration top-3", "predictability top-3", "per layer"):
        assert fragment in res.out, fragment


def test_stats_of_a_directory_and_stats_files_added_in(tmp_path, cli):
    (a, b), _, _ = write_synth(tmp_path / "d" / "t.parquet", tokens=3000, split_at=1000)
    assert cli("stats", a, "--out", tmp_path / "a.npz").code == 0
    res = cli("stats", b, tmp_path / "a.npz", "--out", tmp_path / "sum.npz")
    assert res.code == 0, res.err
    assert cli("stats", tmp_path / "d", "--out", tmp_path / "dir.npz").code == 0
    np.testing.assert_array_equal(load_stats(tmp_path / "sum.npz").coact_LEE, load_stats(tmp_path / "dir.npz").coact_LEE)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cli):
    a, _, _ = write_synth(tmp_path / "a.parquet")
    c, _, _ = write_synth(tmp_path / "c.parquet", top_k=3)
    out = tmp_path / "s.npz"
    res = cli("stats", a, c, "--out", out)
    assert_one_line_error(res, 2, "c.parquet", "(4, 16, 3) differs", "(4, 16, 2)")
    # An empty trace: a valid file with no rows.
    meta = TraceMeta(num_layers=2, num_experts=4, top_k=1)
    schema = arrow_schema(meta, with_token_id=False, with_domain=False, with_present=False)
    pq.write_table(pa.Table.from_batches([], schema=schema), tmp_path / "empty.parquet")
    assert_one_line_error(cli("stats", tmp_path / "empty.parquet", "--out", out), 2, "empty.parquet", "no tokens")
    assert_one_line_error(cli("stats", tmp_path / "none.parquet"), 2, "none.parquet", "not found")
    assert_one_line_error(cli("stats", tmp_path / "x.json"), 2, "x.json", "not found")
    (tmp_path / "x.json").write_text("{}")
    assert_one_line_error(cli("stats", tmp_path / "x.json"), 2, "unknown input type '.json'", "--load")
    assert_one_line_error(cli("stats", a, "--by", "layer"), 2, "--by 'layer'", "phase, domain")
    assert_one_line_error(cli("stats", a, "--graph", tmp_path / "g.dot"), 2, "g.dot", ".graphml or .gexf")
    assert_one_line_error(cli("stats", a, "--plots", tmp_path / "p", "--plot-layers", "9"), 2, "--plot-layers 9")
    assert_one_line_error(cli("stats", a, "--top-m", "0"), 2, "--top-m 0")
    assert_one_line_error(cli("stats", a, "--top-k", "2"), 2, "--top-k is for --load")
    assert_one_line_error(cli("stats", "--json"), 2, "give trace files")
    np.save(tmp_path / "l.npy", np.ones((4, 16), int))
    assert_one_line_error(cli("stats", a, "--load", tmp_path / "l.npy", "--by", "phase"), 2, "--by phase", "l.npy")
    assert not out.exists()
    assert not (tmp_path / "p").exists()


def test_by_domain_needs_a_domain_column(tmp_path, cli):
    from placer.core.trace import write_trace
    from tests.stats.conftest import random_batch

    b = random_batch(50, 2, 4, 1, seed=0, drop=0)
    b.domain_T = None
    path = write_trace(tmp_path / "nodomain.parquet", TraceMeta(2, 4, 1), b)
    assert_one_line_error(cli("stats", path, "--by", "domain"), 2, "nodomain.parquet", "column 'domain' is missing")


def test_demo_step_prints_the_summary_and_writes_graph_and_heatmaps(tmp_path, capsys, synth_trace):
    from placer.cli.common import console
    from placer.demo import STEPS, DemoContext, step_stats

    names = [n for n, _ in STEPS]
    assert names.index("stats") > names.index("trace")
    path, _, _ = synth_trace
    ctx = DemoContext(out=tmp_path, console=console(), files={"trace": path})
    step_stats(ctx)
    out = capsys.readouterr().out
    assert "mutual information" in out and "by phase" in out
    assert load_stats(ctx.files["stats"]).tokens == 4000
    assert ctx.files["graph"].stat().st_size > 0
    assert (ctx.files["plots"] / "load.png").exists()


def test_worked_example_of_the_imported_log(tmp_path, cli):
    """The worked example of docs/stats-format.md: the imported routing log of docs/examples, whose counts can be
    checked by hand."""
    from pathlib import Path

    log = Path(__file__).resolve().parents[2] / "docs" / "examples" / "routing-log.jsonl"
    assert cli("import", log, "--num-experts", "8", "--out", tmp_path / "example.parquet").code == 0
    res = cli("stats", tmp_path / "example.parquet", "--out", tmp_path / "example-stats.npz", "--json")
    assert res.code == 0, res.err
    s = load_stats(tmp_path / "example-stats.npz")
    np.testing.assert_array_equal(s.tokens_L, [6, 5, 6])  # req-b token 1 is missing at model layer 2
    np.testing.assert_array_equal(s.pair_tokens_L, [5, 5])
    np.testing.assert_array_equal(s.load_LE[0], [3, 3, 2, 1, 1, 2, 0, 0])
    # Expert 1 at model layer 1 (req-a tokens 0, 1, 2) is followed by experts 2 and 6 each time.
    assert s.trans_LEE[0, 1].tolist() == [0, 0, 3, 0, 0, 0, 3, 0]
    # req-b token 1 chose expert 3 at layer 1 but is missing at layer 2: expert 3 has no transitions.
    assert s.load_LE[0, 3] == 1 and s.trans_LEE[0, 3].sum() == 0
    out = json.loads(res.out)
    assert out["pairs"]["mutual_information_bits"] == [1.921928, 1.921928]
    assert out["pairs"]["concentration"] == [1.0, 0.9]
