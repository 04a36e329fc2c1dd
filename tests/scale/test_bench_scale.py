"""``moeplace bench scale --part stats`` on a small trace: it runs, every run's statistics are equal, ratios
are reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error

pytest.importorskip("distributed")


def test_bench_scale_stats_small_run(tmp_path, cli):
    res = cli("bench", "scale", "--part", "stats", "--tokens", "4000", "-L", "4", "-E", "16", "-K", "2",
              "--shards", "4", "--workdir", tmp_path, "--json")
    assert res.code == 0, res.err
    r = json.loads(res.out)["stats"]
    assert r["shape"] == [4, 16, 2] and r["tokens"] == 4000 and r["shards"] == 4 and r["equal"] is True
    assert r["entries"] == 4000 * 4 * 2 and len(list(tmp_path.glob("scale-4x16-top2-1000-seed*.parquet"))) == 4
    assert set(r["runs"]) == {"single_1_thread", f"single_{r['cores']}_threads", "dask_1_worker", "dask_2_workers"}
    assert r["runs"]["dask_2_workers"]["workers"] == 2 and r["runs"]["dask_1_worker"]["workers"] == 1
    assert all(v > 0 for v in r["ratios"].values()) and "2_workers_vs_1_worker" in r["ratios"]
    # The table form, and the shards kept in --workdir are not synthesised again.
    from placer.bench.scale import ScaleOptions, _synth_shards, rows_stats

    text = "\n".join(f"{k}: {v}" for k, v in rows_stats(r))
    assert "ratio 2 workers vs 1 worker" in text and "equal to the single process: yes" in text
    o = ScaleOptions(workdir=tmp_path, tokens=4000, shards=4, workers=2, layers=4, experts=16, top_k=2, clusters=8, seed=0)
    assert _synth_shards(o) == ([Path(p) for p in r["files"]], 0.0)


def test_bench_scale_solve_small_run(tmp_path, cli, monkeypatch):
    """The solve part on a small shape (the real ones take minutes): wall time within the limit, objective
    against eplb, bound and gap, the threads' ratio and whether both runs gave one placement."""
    import placer.bench.scale as scale

    monkeypatch.setattr(scale, "SOLVE_SHAPES", {"small": (4, 32, 4, 8, 2, 8)})
    res = cli("bench", "scale", "--part", "solve", "--solve-tokens", "3000", "--time-limit", "3", "--workdir",
              tmp_path, "--json")
    assert res.code == 0, res.err
    r = json.loads(res.out)["solve"]["shapes"]["small"]
    assert r["shape"] == [4, 32, 4] and r["gpus"] == 8 and r["redundant"] == 8 and r["tokens"] == 3000
    for key in ("auto_1", "auto_2"):
        a = r[key]
        assert a["wall_s"] <= 3 * 1.1 + 1.5 and a["status"] in ("OPTIMAL", "FEASIBLE")
        assert a["bound"] <= a["objective"] + 1e-6 and 0 <= a["gap"] < 1
        assert a["objective"] <= r["eplb_objective"]
    assert r["search_ratio"] > 0 and r["work_rate_ratio"] > 0 and r["peak_rss_mb"] > 0 and isinstance(r["same_placement"], bool)
    text = "\n".join(f"{k}: {v}" for k, v in scale.rows_solve(json.loads(res.out)["solve"]))
    assert "solve small: auto, 2 thread(s)" in text and "--threads 2 vs 1" in text


def test_bench_scale_usage_errors(tmp_path, cli):
    assert_one_line_error(cli("bench", "scale", "--part", "nope"), 2, "--part 'nope'", "stats", "solve")
    assert_one_line_error(cli("bench", "scale", "--part", "solve", "--threads", "1", "--workdir", tmp_path), 2,
                          "--threads 1")
    assert_one_line_error(cli("bench", "scale", "--tokens", "3", "--shards", "4", "--workdir", tmp_path), 2,
                          "--tokens 3 in --shards 4")
    assert_one_line_error(cli("bench", "scale", "--workers", "1", "--workdir", tmp_path), 2, "--workers 1")
