"""``moeplace bench validate``: predicted against measured speedups over several placements and traces (virtual and
gloo backends on the CPU), its table, JSON and PNG; and the issue's target on the virtual backend (slow)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    from tests.replay.conftest import write_trace

    d = tmp_path_factory.mktemp("validate")
    return [write_trace(d / f"t{i}.parquet", tokens=512, experts=8, drop_rate=0.0, seed=i) for i in (1, 2)]


def _args(traces, out, *extra):
    args = ["bench", "validate", "--out-dir", out, "--gpus", 4, "--hidden", 32, "--ffn", 32, "--tokens-per-step", 256,
            "--steps", 2, "--threads", 1, "--topology", "h100", "--json", *extra]
    for t in traces:
        args += ["--trace", t]
    return args


def test_validate_on_the_virtual_backend_writes_table_json_and_scatter(cli, traces, tmp_path):
    res = cli(*_args(traces, tmp_path, "--placement", "contiguous", "--placement", "round_robin",
                     "--placement", "greedy", "--placement", "eplb:G"))
    assert res.code == 0, res.err
    d = json.loads(res.out)
    names = {t.stem for t in traces}
    assert {r["trace"] for r in d["rows"]} == names
    for name in names:
        rows = [r for r in d["rows"] if r["trace"] == name]
        dropped = d["duplicates_dropped"][name]
        assert len(rows) + len(dropped) == 4 and rows[0]["placement"] == "contiguous"
        assert rows[0]["measured_speedup"] == rows[0]["predicted_speedup"] == 1.0
        assert all(r["correct"] and r["predicted_step_ms"] > 0 and r["measured_step_ms"] > 0 for r in rows)
    s = d["summary"]
    assert set(s["rank_correlation_per_trace"]) == names and "rank_correlation_pooled" in s
    assert d["timer"] == "thread_time" and d["topology"] == "h100"
    assert (tmp_path / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "validate.md").read_text()
    assert md.startswith("| trace | placement |") and md.count("\n") == len(d["rows"]) + 2


def test_validate_prints_the_correlations(cli, traces, tmp_path):
    args = [a for a in _args(traces[:1], tmp_path, "--placement", "contiguous", "--placement", "eplb:G") if a != "--json"]
    res = cli(*args)
    assert res.code == 0, res.err
    assert "rank correlation of predicted and measured speedups" in res.out and "scatter.png" in res.out
    # The summary's errors are absolute, printed unsigned and labelled so (a '+' would read as "predicted high").
    line = next(l for l in res.out.splitlines() if "step-time error" in l)
    assert line.startswith("absolute step-time error: median ") and "absolute speedup error" in line
    assert "+" not in line and "-" not in line.replace("step-time", ""), line


@pytest.mark.multiprocess
def test_validate_on_gloo_processes(cli, traces, tmp_path):
    args = _args(traces[:1], tmp_path, "--backend", "gloo", "--placement", "contiguous", "--placement", "eplb:G")
    args[args.index("--gpus") + 1] = 2
    res = cli(*args)
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["backend"] == "gloo" and d["timer"] == "perf_counter" and len(d["rows"]) == 2


def test_validate_bad_input(cli, traces, tmp_path):
    assert_one_line_error(cli(*_args(traces, tmp_path, "--backend", "nccl")), 2, "--backend 'nccl'")
    assert_one_line_error(cli(*_args(traces, tmp_path, "--placement", "contiguous")), 2,
                          "give at least two placements to compare, got 1")
    assert_one_line_error(cli(*_args(traces, tmp_path, "--placement", "contiguous", "--placement", "eplb:x")), 2,
                          "--placement 'eplb:x'")


@pytest.mark.slow
def test_predicted_speedups_order_placements_as_measured(cli, tmp_path):
    """The issue's target: on the virtual backend, the cost model's predicted speedups over at least 6
    placements rank-correlate with the measured ones at 0.8 or more (same run). The default benchmark: a
    calibration here, then three synthetic traces (Zipf 0.6, 1.0, 1.4), each one replay of 7 placements (6
    distinct layouts: eplb without redundancy gives greedy's). One trace's correlation rests on 6 noisy
    medians, so the test holds the median over the three traces to the target (BENCHMARKS.md has each run)."""
    res = cli("bench", "validate", "--out-dir", tmp_path, "--calibrate-budget", 15, "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    for trace in d["summary"]["rank_correlation_per_trace"]:
        rows = [r for r in d["rows"] if r["trace"] == trace]
        assert len(rows) >= 6 and all(r["correct"] for r in rows), rows
    rhos = sorted(d["summary"]["rank_correlation_per_trace"].values())
    assert rhos[1] >= 0.8, d["summary"]
