"""Policy simulation: window by window, each policy re-places on what it has seen; figures and moves add up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.cost import evaluate_trace
from placer.core.moves import align, count_moves
from placer.core.stats.core import compute_stats
from placer.core.topology import Topology
from placer.core.trace.reader import concat_batches
from placer.core.trace.writer import TraceWriter
from placer.simulate import Policy, Window, simulate
from placer.synth import SynthConfig, generate
from solvers import get_solver
from tests.conftest import assert_one_line_error


def _windows(n=4, width=2000, seed=3):
    meta, bs = generate(SynthConfig(layers=3, experts=16, top_k=2, tokens=n * width, seed=seed, domains=3,
                                    drift=0.4, drift_periods=n, seq_len=100, clusters=4))
    b = concat_batches(list(bs))
    out = []
    for k in range(n):
        part = b.select(np.arange(k * width, (k + 1) * width))
        out.append(Window(f"w{k}", compute_stats([part], 3, 16, 2), part))
    return meta, b, out


def test_policies_see_only_the_past_and_static_never_moves():
    _, _, windows = _windows()
    topo = Topology(4)
    sim = simulate(windows, [Policy.parse("static"), Policy.parse("greedy"), Policy.parse("rebalance:1")],
                   topo, redundant=4, mode="ep", expert_bytes=100.0, time_limit_s=1.0)
    assert sim.windows == ["w1", "w2", "w3"] and len(sim.rows) == 9
    static = [r for r in sim.rows if r.policy == "static"]
    assert all(r.moves == 0 and r.transfer_ms == 0.0 for r in static)
    # static is eplb fitted on window 0: its figures on window 2 are the cost model's.
    fixed = get_solver("eplb")(_problem(windows[0], topo))
    r2 = evaluate_trace(windows[2].batch, fixed, topo, "ep")
    assert static[1].max_over_mean == pytest.approx(r2.mean_imbalance)
    # greedy re-solved on window w-1 (history "last"): on window 2 it is greedy fitted to window 1, its GPUs renamed
    # to match the placement before (window 1's: greedy fitted to window 0).
    g2 = next(r for r in sim.rows if r.policy == "greedy" and r.window == "w2")
    p0 = get_solver("greedy")(_problem(windows[0], topo))
    p2 = align(p0, get_solver("greedy")(_problem(windows[1], topo)))
    assert g2.max_over_mean == pytest.approx(evaluate_trace(windows[2].batch, p2, topo, "ep").mean_imbalance)
    assert g2.moves == count_moves(p0, p2).total
    assert all(r.moves <= 3 for r in sim.rows if r.policy == "rebalance:1")  # 1 per layer, 3 layers
    totals = {t["policy"]: t for t in sim.totals()}
    assert totals["greedy"]["moves"] == sum(r.moves for r in sim.rows if r.policy == "greedy")
    assert totals["greedy"]["bytes_moved"] == 100.0 * totals["greedy"]["moves"]
    assert totals["static"]["total_ms"] == pytest.approx(totals["static"]["time_ms"])
    # Traffic in the totals: the windows' figures weighted by their tokens.
    assert sim.traffic.key == "remote_gpus_per_token" and all(r.tokens == 2000 for r in sim.rows)
    assert static[1].traffic_per_token == pytest.approx(r2.remote_gpus_per_token)
    for name, t in totals.items():
        mine = [r for r in sim.rows if r.policy == name]
        assert t["traffic_per_token"] == pytest.approx(
            sum(r.traffic_per_token * r.tokens for r in mine) / sum(r.tokens for r in mine))


def _problem(window, topo):
    from solvers import PlacementProblem

    s = window.stats
    return PlacementProblem(s.load_LE, topo, num_redundant=4, top_k=2, coact_LEE=s.coact_LEE, trans_LEE=s.trans_LEE)


def test_cli_writes_json_and_plot(cli, tmp_path):
    meta, b, _ = _windows(n=3)
    trace = tmp_path / "t.parquet"
    with TraceWriter(trace, meta, with_domain=True) as w:
        w.write(b)
    out, plot = tmp_path / "sim.json", tmp_path / "sim.png"
    res = cli("simulate", trace, "--window", 2500, "--gpus", 4, "--redundant", 4, "--policy", "static",
              "--policy", "eplb", "--history", "all", "-o", out, "--plot", plot)
    assert res.code == 0, res.err
    d = json.loads(out.read_text())
    assert [t["policy"] for t in d["totals"]] == ["static", "eplb"] and len(d["per_window"]) == 4
    assert plot.stat().st_size > 1000 and "worst max/mean" in res.out
    # Traffic: a token-weighted figure in the totals, a column in both tables (the last window is shorter).
    assert d["traffic_figure"] == "remote_gpus_per_token"
    rows = [r for r in d["per_window"] if r["policy"] == "static"]
    assert [r["tokens"] for r in rows][-1] < rows[0]["tokens"]
    assert d["totals"][0]["traffic_per_token"] == pytest.approx(
        np.average([r["traffic_per_token"] for r in rows], weights=[r["tokens"] for r in rows]))
    tables = res.out.split("per window")
    assert len(tables) == 2 and all("remote GPUs" in t for t in tables)
    assert f"{d['totals'][0]['traffic_per_token']:.3f}" in tables[0]


@pytest.mark.parametrize("args, fragments", [
    (["--policy", "nope"], ["--policy 'nope': choose static, rebalance:K or a solver"]),
    (["--policy", "rebalance:x"], ["give the moves per layer"]),
    (["--history", "some"], ["--history 'some': choose last or all"]),
    (["--window", "100000"], ["make 1 window", "at least two"]),
])
def test_bad_requests_are_one_line(cli, tmp_path, args, fragments):
    meta, b, _ = _windows(n=2)
    trace = tmp_path / "t.parquet"
    with TraceWriter(trace, meta) as w:
        w.write(b)
    base = ["--window", "2000"] if "--window" not in args else []
    res = cli("simulate", trace, "--gpus", 4, *base, *args)
    assert_one_line_error(res, 2, *fragments)
