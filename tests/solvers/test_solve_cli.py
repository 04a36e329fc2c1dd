"""``moeplace solve`` with the optimising solvers: defaults, options, evaluate measuring the same objective,
and bad input as one line."""

from __future__ import annotations

import builtins
import json

import pytest

from placer.synth import SynthConfig, generate
from placer.core.trace.writer import TraceWriter
from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    path = tmp_path_factory.mktemp("solve") / "train.parquet"
    meta, batches = generate(SynthConfig(layers=4, experts=8, top_k=2, tokens=3000, clusters=4, seed=3))
    with TraceWriter(path, meta) as w:
        for b in batches:
            w.write(b)
    return path


@pytest.mark.parametrize("mode", ["ep", "coherent"])
def test_solve_defaults_to_auto_and_evaluate_measures_its_objective(cli, train, tmp_path, mode):
    out = tmp_path / "auto.json"
    res = cli("solve", train, "--gpus", "4", "--mode", mode, "--time-limit", "5", "--out", out, "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)
    assert s["solver"] == "auto" and s["status"] == "OPTIMAL" and s["gap"] == 0.0
    assert s["objective_name"].endswith("*max_load")
    res = cli("evaluate", train, out, "--mode", mode, "--json")
    assert res.code == 0, res.err
    p = next(d for d in json.loads(res.out)["placements"] if d["solver"] == "auto")
    assert p["objective_measured"] == pytest.approx(p["objective"], rel=1e-9)


def test_solve_options_reach_the_solver(cli, train, tmp_path):
    out = tmp_path / "c.json"
    res = cli("solve", train, "--gpus", "4", "--nodes", "2", "--solver", "cpsat", "--balance-weight", "2",
              "--intra-weight", "1.5", "--inter-weight", "6", "--max-imbalance", "1.5", "--time-limit", "3",
              "--seed", "1", "--threads", "1", "--out", out, "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)
    assert s["objective_name"] == "1.125*ep_dispatch_gpus+2.25*ep_dispatch_nodes+2.0*max_load"
    p = json.loads(out.read_text())
    assert p["extra"]["weights"] == {"intra_weight": 1.5, "inter_weight": 6.0, "balance_weight": 2.0,
                                     "max_imbalance": 1.5}


def test_solve_milp_solvers(cli, train, tmp_path):
    for solver, extra, name in (("exflow", ["--batches", "2", "--backend", "highs"], "exflow_hops"),
                                ("moetuner", ["--backend", "cbc"], "moetuner_max_link_us")):
        out = tmp_path / f"{solver}.json"
        res = cli("solve", train, "--gpus", "4", "--mode", "coherent", "--solver", solver, *extra,
                  "--time-limit", "4", "--out", out, "--json")
        assert res.code == 0, res.err
        s = json.loads(res.out)
        assert s["objective_name"] == name and s["status"] in ("OPTIMAL", "FEASIBLE")


@pytest.mark.parametrize("args,code,fragments", [
    (["--balance-weight", "-1"], 2, ["auto: balance_weight (-1.0) must be >= 0"]),
    (["--intra-weight", "2", "--inter-weight", "1"], 2, ["inter_weight (1.0) must be >= intra_weight (2.0)"]),
    (["--max-imbalance", "1.0"], 2, ["max_imbalance 1.0 caps layer", "but no placement goes below"]),
    (["--backend", "highs"], 2, ["--backend applies to exflow, moetuner, not auto"]),
    (["--solver", "moetuner", "--backend", "glpk"], 2, ["backend 'glpk' is not one of cbc, highs"]),
    (["--solver", "moetuner", "--redundant", "4"], 2, ["moetuner places each expert once; redundant (4) must be 0"]),
    (["--solver", "greedy", "--balance-weight", "1"], 2, ["--balance-weight applies to auto, cpsat, not greedy"]),
    (["--redundant", "3"], 2, ["experts (8) + redundant (3) must divide by gpus (4)"]),
])
def test_solve_bad_requests(cli, train, tmp_path, args, code, fragments):
    res = cli("solve", train, "--gpus", "4", *args, "--out", tmp_path / "p.json")
    assert_one_line_error(res, code, *fragments)
    assert not (tmp_path / "p.json").exists()


def test_missing_backend_names_the_package_and_what_still_works(cli, train, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_highspy(name, *args, **kw):
        if name == "highspy":
            raise ImportError("No module named 'highspy'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_highspy)
    res = cli("solve", train, "--gpus", "4", "--solver", "exflow", "--backend", "highs", "--out", tmp_path / "p.json")
    assert_one_line_error(res, 1, "exflow --backend highs needs the Python package highspy (pip install highspy)",
                          "still working: exflow --backend cbc, auto, cpsat")


def test_a_milp_that_finds_nothing_in_time_falls_back_to_the_sweeps(cli, train, tmp_path):
    """exflow with a millisecond builds no program in time: the time limit is a promise of a placement, so the
    layer-by-layer assignment sweeps stand in, FEASIBLE with no bound, and the placement says why."""
    res = cli("solve", train, "--gpus", "4", "--solver", "exflow", "--time-limit", "0.001", "--json",
              "--out", tmp_path / "p.json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["status"] == "FEASIBLE" and d["bound"] is None and d["gap"] is None
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["extra"]["fallback"].startswith("assignment sweeps: batch 1") and saved["extra"]["batches"] == []
