"""Scenarios: inputs as workloads, the robust objective (worst or mean, per token), hedged copies, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.cost import evaluate_trace
from placer.core.objective import Aggregate
from placer.core.placement_io import load_placement
from placer.core.stats.core import compute_stats
from placer.core.topology import Topology
from placer.core.trace.reader import TraceReader, concat_batches
from placer.core.trace.writer import TraceWriter
from placer.synth import SynthConfig, generate
from solvers import PlacementProblem, SolveOptions, get_solver
from solvers.robust import Scenarios, hedged_copies, scenario_figures
from tests.conftest import assert_one_line_error


def _problem(batch, L, E, K, G=4, N=1, R=4, paths=True):
    st = compute_stats([batch], L, E, K)
    return PlacementProblem(st.load_LE, Topology(G, N), num_redundant=R, top_k=K, coact_LEE=st.coact_LEE,
                            trans_LEE=st.trans_LEE, paths_TLK=batch.experts_TLK if paths else None,
                            seq_T=batch.seq_T if paths else None)


@pytest.fixture(scope="module")
def windows():
    """Three windows of a drifting trace (4 layers, 16 experts, top-2), as problems with token paths."""
    _, bs = generate(SynthConfig(layers=4, experts=16, top_k=2, tokens=9000, seed=4, domains=3, drift=0.4,
                                 drift_periods=3, seq_len=100, clusters=4))
    b = concat_batches(list(bs))
    parts = [b.select(np.arange(k * 3000, (k + 1) * 3000)) for k in range(3)]
    return parts, [_problem(p, 4, 16, 2) for p in parts]


def test_hedged_copies_go_to_the_expert_hot_in_any_scenario():
    # Expert 0 is hot in scenario a only, expert 1 a little warm in both: EPLB's rule on the sum would copy
    # expert 1 (total 120 against 100); on the peak per token, expert 0 (100 in a) beats expert 1 (60).
    a = np.array([[100, 60, 20, 20]], float)
    b = np.array([[0, 60, 20, 20]], float)
    scn = Scenarios((PlacementProblem(a, Topology(1), num_redundant=1), PlacementProblem(b, Topology(1), num_redundant=1)),
                    ("a", "b"), (200.0, 200.0))
    assert hedged_copies(scn).tolist() == [[2, 1, 1, 1]]


@pytest.mark.parametrize("aggregate", ["worst", "mean"])
def test_robust_auto_reports_exact_scenario_figures_and_a_valid_bound(windows, aggregate):
    parts, problems = windows
    scn = Scenarios(tuple(problems), ("w0", "w1", "w2"), (3000.0,) * 3, aggregate)
    p = get_solver("auto").solve_scenarios(scn, SolveOptions(time_limit_s=2))
    r = p.report
    assert r.objective.robust is Aggregate(aggregate)
    fig = r.extra["scenarios"]
    # Every scenario's objective per token is what the cost model measures on its tokens.
    results = [evaluate_trace(b, p, Topology(4), "ep") for b in parts]
    measured = [r.objective.measure(res) for res in results]
    assert [row["objective_per_token"] for row in fig["scenarios"]] == pytest.approx(measured, rel=1e-9)
    assert r.objective_value == pytest.approx(r.objective.measure_scenarios(results), rel=1e-9)
    assert fig[aggregate]["objective_per_token"] == pytest.approx(r.objective_value, rel=1e-9)
    # Traffic per token and layer, as evaluate counts it (the distinct GPUs, home or not; remote: averaged over the
    # home GPU, (G - 1) / G of them).
    for row, res in zip(fig["scenarios"], results):
        per_layer = res.dispatch_gpus_L.sum() / res.token_layers_L.sum()
        assert row["distinct_gpus_per_token_layer"] == pytest.approx(per_layer, rel=1e-9)
        assert row["remote_gpus_avg_per_token_layer"] == pytest.approx(per_layer * 3 / 4, rel=1e-9)
        assert row["remote_gpus_avg_per_token_layer"] == pytest.approx(res.remote_gpus_per_token, rel=0.05)
        assert not any(k.endswith("_per_token") and k != "objective_per_token" for k in row)
    assert r.bound is not None and r.bound <= r.objective_value + 1e-9 and 0 <= r.gap < 1
    # Never worse on its own objective than the baselines fitted to the sum of the scenarios (they are candidates).
    for name in ("eplb", "greedy"):
        other = get_solver(name)(scn.summed())
        others = [r.objective.measure(evaluate_trace(b, other, Topology(4), "ep")) for b in parts]
        assert r.objective_value <= Aggregate(aggregate).combine(others) + 1e-9


def test_solvers_without_a_robust_method_solve_the_sum(windows):
    _, problems = windows
    scn = Scenarios(tuple(problems), ("w0", "w1", "w2"), (3000.0,) * 3)
    p = get_solver("eplb").solve_scenarios(scn)
    assert p == get_solver("eplb")(scn.summed())
    assert [row["name"] for row in p.report.extra["scenarios"]["scenarios"]] == ["w0", "w1", "w2"]


def test_scenarios_of_different_shapes_are_refused():
    a = PlacementProblem(np.ones((2, 8)), Topology(4))
    b = PlacementProblem(np.ones((3, 8)), Topology(4))
    with pytest.raises(ValueError, match=r"scenario 'b' is \(layers, experts, redundant, GPUs, nodes, mode\)"):
        Scenarios((a, b), ("a", "b"), (1.0, 1.0))
    with pytest.raises(ValueError, match="scenario 'a' has no tokens"):
        Scenarios((a,), ("a",), (0.0,))


@pytest.fixture
def drift_trace(tmp_path):
    meta, batches = generate(SynthConfig(layers=3, experts=16, top_k=2, tokens=6000, seed=2, domains=3, drift=0.3,
                                         drift_periods=3, seq_len=100, clusters=4))
    path = tmp_path / "d.parquet"
    with TraceWriter(path, meta, with_domain=True) as w:
        for b in batches:
            w.write(b)
    return path


@pytest.mark.parametrize("how, names", [("domain", ["domain 0", "domain 1", "domain 2"]),
                                        ("window:2000", ["tokens 0-1999", "tokens 2000-3999", "tokens 4000-5999"])])
def test_solve_and_evaluate_with_scenarios(cli, tmp_path, drift_trace, how, names):
    out = tmp_path / "p.json"
    res = cli("solve", drift_trace, "--gpus", 4, "--redundant", 4, "--scenarios", how, "--time-limit", 1,
              "--holdout-check", "-o", out, "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)
    assert [row["name"] for row in s["scenarios"]["scenarios"]] == names
    assert s["objective"] == pytest.approx(s["scenarios"]["worst"]["objective_per_token"])
    assert [row["name"] for row in s["holdout_check"]["scenarios"]] == names
    p = load_placement(out)
    assert p.report.objective.robust is Aggregate.WORST and "scenarios" in p.report.extra
    # evaluate: one row per placement and scenario, and the worst.
    res = cli("evaluate", drift_trace, out, "--scenarios", how, "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    mine = d["placements"][0]
    assert list(mine["scenarios"]) == names
    assert mine["worst"]["max_over_mean"] == max(v["summary"]["mean_imbalance"] for v in mine["scenarios"].values())
    assert mine["objective_measured"] == pytest.approx(s["objective"], rel=1e-9)
    # Worst and mean of every figure, traffic and time included (the speedup's worst is its lowest).
    summaries = [v["summary"] for v in mine["scenarios"].values()]
    for key, worst in (("remote_gpus_per_token", max), ("total_us", max), ("speedup", min)):
        name = {"total_us": "time_ms"}.get(key, key)
        scale = 1e3 if key == "total_us" else 1
        assert mine["worst"][name] * scale == pytest.approx(worst(x[key] for x in summaries))
        assert mine["mean"][name] * scale == pytest.approx(np.mean([x[key] for x in summaries]))
    text = cli("evaluate", drift_trace, out, "--scenarios", how).out
    assert "worst" in text and names[0].split()[0] in text
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[3:-1]]
            for line in text.splitlines() if line.count("│") > 4}
    assert all(cells and all(cells) for agg, cells in rows.items() if agg in ("worst", "mean"))
    assert "mean" in rows and "worst" in rows
    # solve's table: a traffic column, per token and layer as evaluate's.
    text = cli("solve", drift_trace, "--gpus", 4, "--redundant", 4, "--scenarios", how, "--time-limit", 1,
               "-o", tmp_path / "q.json").out
    assert "remote GPUs" in text and "per layer" in " ".join(text.split())


def test_scenarios_from_several_inputs(cli, tmp_path, drift_trace):
    r = TraceReader(drift_trace)
    b = r.read_all()
    for k in range(2):
        with TraceWriter(tmp_path / f"part{k}.parquet", r.meta) as w:
            w.write(b.select(np.arange(k * 3000, (k + 1) * 3000)))
    res = cli("solve", tmp_path / "part0.parquet", tmp_path / "part1.parquet", "--gpus", 4, "--scenarios", "inputs",
              "--robust", "mean", "--time-limit", 1, "-o", tmp_path / "p.json", "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)
    assert [row["name"] for row in s["scenarios"]["scenarios"]] == ["part0", "part1"]
    assert s["objective"] == pytest.approx(s["scenarios"]["mean"]["objective_per_token"])


@pytest.mark.parametrize("args, fragments", [
    (["--robust", "worst"], ["--robust needs --scenarios"]),
    (["--holdout-check"], ["--holdout-check needs --scenarios"]),
    (["--scenarios", "window"], ["give the window's tokens"]),
    (["--scenarios", "window:0"], ["the window must hold at least one token"]),
    (["--scenarios", "window:100000"], ["gives 1 scenario", "needs at least two"]),
    (["--scenarios", "weekday"], ["choose inputs, domain, phase, window:N"]),
    (["--scenarios", "domain", "--robust", "best"], ["--robust 'best': choose worst or mean"]),
])
def test_bad_scenario_requests_are_one_line(cli, tmp_path, drift_trace, args, fragments):
    out = tmp_path / "p.json"
    res = cli("solve", drift_trace, "--gpus", 4, *args, "-o", out)
    assert_one_line_error(res, 2, *fragments)
    assert not out.exists()


def test_scenario_figures_of_a_load_only_input():
    a = np.array([[10, 30, 30, 30]], float)
    scn = Scenarios((PlacementProblem(a, Topology(2)),), ("a",), (50.0,))
    p = get_solver("contiguous")(scn.first)
    fig = scenario_figures(scn, SolveOptions(), p)
    assert fig["scenarios"][0]["max_over_mean"] == pytest.approx(60 / 50)


@pytest.mark.parametrize("aggregate", ["worst", "mean"])
def test_robust_cpsat_proves_the_robust_optimum_found_by_brute_force(aggregate):
    """2 layers x 8 experts on 2 GPUs, two windows of a drifting trace: CP-SAT's joint model of both scenarios
    (robust step 4) proves the robust optimum, which brute force over every assignment confirms; its bound,
    scaled back from the model's integer coefficients, is valid."""
    import itertools

    from solvers.robust import RobustSearch
    from tests.solvers.helpers import labelled_layers

    _, bs = generate(SynthConfig(layers=2, experts=8, top_k=2, tokens=2000, seed=4, domains=2, drift=0.5,
                                 drift_periods=2, seq_len=100, clusters=2))
    b = concat_batches(list(bs))
    parts = [b.select(np.arange(k * 1000, (k + 1) * 1000)) for k in range(2)]
    scn = Scenarios(tuple(_problem(p, 2, 8, 2, G=2, R=0) for p in parts), ("a", "b"), (1000.0, 700.0), aggregate)
    options = SolveOptions(time_limit_s=10, params={"max_imbalance": 0})  # no cap: every assignment counts
    for name in ("auto", "cpsat"):
        p = get_solver(name).solve_scenarios(scn, options)
        r = p.report
        search = RobustSearch(scn, options)
        rows = labelled_layers(8, 2)
        best = min(search.value(np.stack([rows[i], rows[j]])) for i, j in itertools.product(range(len(rows)), repeat=2))
        assert r.extra["robust_cpsat"]["status"] == "OPTIMAL"
        assert r.extra["robust_cpsat"]["bound"] <= best * (1 + 1e-9)
        assert r.objective_value == pytest.approx(best, rel=1e-9)
        assert r.status == "OPTIMAL" and r.bound == pytest.approx(best, rel=1e-9)


def test_a_too_short_trace_gets_one_note_naming_the_scenarios(cli, tmp_path):
    meta, batches = generate(SynthConfig(layers=4, experts=64, top_k=2, tokens=3000, seed=1, zipf=0.3))
    trace = tmp_path / "short.parquet"
    with TraceWriter(trace, meta) as w:
        for b in batches:
            w.write(b)
    res = cli("solve", trace, "--gpus", 4, "-s", "eplb", "--scenarios", "window:1000", "-o", tmp_path / "p.json",
              "--json")
    assert res.code == 0, res.err
    note = json.loads(res.out)["sampling_note"]
    assert note.startswith("3 of 3 scenarios (tokens 0-999, tokens 1000-1999, tokens 2000-2999): in ")
    assert note.count("sampling noise") == 1 and "short.parquet" not in note
    text = " ".join(cli("solve", trace, "--gpus", 4, "-s", "eplb", "--scenarios", "window:1000", "-o",
                        tmp_path / "p.json").out.split())
    assert text.count("note:") == 1 and "longer scenarios would tell them apart" in text
