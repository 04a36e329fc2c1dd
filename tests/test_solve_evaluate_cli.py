"""``moeplace solve`` and ``moeplace evaluate`` end to end, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.cost import evaluate_trace
from placer.core.placement_io import load_placement, placement_to_dict
from placer.synth import SynthConfig, generate
from placer.core.trace.writer import TraceWriter
from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "t.parquet"
    meta, batches = generate(SynthConfig(layers=4, experts=16, top_k=2, tokens=3000, seed=1, clusters=4, seq_len=50))
    with TraceWriter(path, meta) as w:
        for b in batches:
            w.write(b)
    return path


@pytest.fixture(scope="module")
def placements(trace, tmp_path_factory):
    from placer.cli.main import run

    out = tmp_path_factory.mktemp("placements")
    paths = {}
    for name, extra in (("greedy", []), ("eplb", ["--redundant", "4"]), ("round_robin", [])):
        paths[name] = out / f"{name}.json"
        assert run(["-q", "solve", str(trace), "--solver", name, "--gpus", "4", *extra, "--out", str(paths[name]),
                    "--json"]) == 0
    return paths


def test_solve_writes_a_placement_and_a_summary(cli, trace, tmp_path):
    out = tmp_path / "p.json"
    res = cli("solve", trace, "--solver", "eplb", "--gpus", "8", "--nodes", "2", "--redundant", "8",
              "--groups", "4", "--out", out)
    assert res.code == 0, res.err
    assert f"wrote {out}" in res.out and "eplb" in res.out and "HEURISTIC" in res.out
    p = load_placement(out)
    assert (p.num_layers, p.num_experts, p.num_slots, p.num_gpus, p.num_nodes) == (4, 16, 24, 8, 2)
    assert p.report.extra == {"groups": 4, "policy": "hierarchical"} and p.report.source == str(trace)
    assert p.model_layer_indices == (0, 1, 2, 3) and p.topology.num_nodes == 2


def test_solve_json_summary_and_determinism(cli, trace, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        res = cli("solve", trace, "--solver", "random", "--gpus", "4", "--seed", "3", "--out", out, "--json")
        assert res.code == 0, res.err
    s = json.loads(res.out)
    assert s["solver"] == "random" and s["status"] == "HEURISTIC" and s["objective"] is None
    assert s["shape"] == {"layers": 4, "experts": 16, "slots": 16, "gpus": 4, "nodes": 1}
    assert s["max_over_mean_load"] >= 1.0 and not s["input_load_only"]
    assert load_placement(a) == load_placement(b)


def test_solve_from_a_load_matrix(cli, tmp_path):
    load = np.array([[10, 1, 1, 8], [1, 1, 1, 1]], dtype=float)
    np.save(tmp_path / "load.npy", load)
    res = cli("solve", "--load", tmp_path / "load.npy", "--solver", "greedy", "--gpus", "2",
              "--out", tmp_path / "p.json", "--json")
    assert res.code == 0, res.err
    p = load_placement(tmp_path / "p.json")
    np.testing.assert_array_equal(p.phy2log_LP[0], [0, 2, 3, 1])  # the greedy worked example
    s = json.loads(res.out)
    assert s["input_load_only"] and s["max_over_mean_load"] == pytest.approx((11 / 10 + 1) / 2)
    # The balance bound by hand: layer 0 at least 10 + 1 (the heaviest expert and the lightest beside it; the
    # mean is 10), layer 1 at least 2: 13 tokens per GPU summed, which greedy reaches (gap 0).
    assert s["balance_bound"] == {"max_load": 13.0, "bound": 13.0, "gap": 0.0,
                                  "unit": "tokens per GPU, summed over the layers"}


@pytest.mark.parametrize("solver", ["greedy", "eplb"])
def test_a_load_only_solve_reports_the_balance_bound_for_every_solver(cli, tmp_path, solver):
    """Not only auto and cpsat: every solver's placement of a load matrix gets the balance lower bound (mean
    load per GPU, heaviest copy with the lightest others, over every placement of these slots) and its gap, as
    a load beside the objective's units."""
    from solvers.bounds import load_balance_bounds

    load = np.random.default_rng(5).zipf(1.5, size=(3, 16)).astype(float) * 10
    np.save(tmp_path / "load.npy", load)
    args = ["solve", "--load", tmp_path / "load.npy", "--solver", solver, "--gpus", 4, "--redundant", 4,
            "--out", tmp_path / "p.json"]
    s = json.loads(cli(*args, "--json").out)
    b = s["balance_bound"]
    assert b["bound"] == pytest.approx(load_balance_bounds(load, 4, 5).sum()) and 0 < b["bound"] <= b["max_load"]
    assert b["gap"] == pytest.approx((b["max_load"] - b["bound"]) / b["max_load"])
    # In the objective's units too (the balance weight times the load), where the solver reported none.
    w = s["objective"] / b["max_load"]
    assert s["objective_name"] == f"{w!r}*max_load" and s["bound"] == pytest.approx(w * b["bound"])
    assert s["gap"] == pytest.approx(b["gap"]) and s["bound_source"] == "balance"
    table = cli(*args).out
    assert "- / -" not in table and f"{b['gap']:.2%}" in table and "load: largest / bound / gap" in table
    assert f"{b['max_load']:,.6g} / {b['bound']:,.6g} / {b['gap']:.2%} (tokens" in table


def test_a_load_only_auto_keeps_its_own_bound_and_adds_the_load_bound(cli, tmp_path):
    load = np.random.default_rng(5).zipf(1.5, size=(3, 16)).astype(float) * 10
    np.save(tmp_path / "load.npy", load)
    s = json.loads(cli("solve", "--load", tmp_path / "load.npy", "--gpus", 4, "--redundant", 4, "--time-limit", 2,
                       "--out", tmp_path / "p.json", "--json").out)
    assert "bound_source" not in s and s["bound"] is not None and s["bound"] <= s["objective"]
    assert s["balance_bound"]["bound"] <= s["balance_bound"]["max_load"]


def test_evaluate_json_matches_the_api(cli, trace, placements):
    res = cli("evaluate", trace, placements["greedy"], placements["eplb"], "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["mode"] == "ep" and d["tokens"] == 3000 and d["reference"] == "contiguous"
    names = [r["name"] for r in d["placements"]]
    assert names == ["greedy", "eplb", "contiguous"]
    assert d["placements"][2]["summary"]["speedup"] == 1.0 and d["placements"][2]["file"] is None
    api = evaluate_trace(trace, load_placement(placements["eplb"]), mode="ep", name="eplb").to_dict()
    row = d["placements"][1]
    assert row["ep"] == api["ep"] and row["load"] == api["load"] and row["bytes"] == api["bytes"]
    assert row["time_us"] == api["time_us"]
    ref_total = d["placements"][2]["time_us"]["total"]
    assert row["summary"]["speedup"] == pytest.approx(ref_total / api["time_us"]["total"])


def test_evaluate_tables_both_modes(cli, trace, placements):
    res = cli("evaluate", trace, placements["greedy"], placements["round_robin"], "--per-layer")
    assert res.code == 0, res.err
    out = " ".join(res.out.split())  # rich wraps long lines
    assert "mode ep" in out and "remote" in out and "round_robin" in out
    assert "contiguous*" in out and "greedy: per layer" in out
    res = cli("evaluate", trace, placements["greedy"], "--mode", "coherent", "--tokens-per-step", "500", "--json")
    d = json.loads(res.out)
    assert d["mode"] == "coherent" and d["placements"][0]["steps"] == 6
    assert len(d["placements"][0]["coherent"]["messages_L1"]) == 3


def test_evaluate_reuses_a_given_contiguous(cli, trace, tmp_path):
    out = tmp_path / "contiguous.json"
    assert cli("solve", trace, "--solver", "contiguous", "--gpus", "4", "--out", out).code == 0
    d = json.loads(cli("evaluate", trace, out, "--json").out)
    assert [r["name"] for r in d["placements"]] == ["contiguous"] and d["placements"][0]["summary"]["speedup"] == 1.0


def test_evaluate_load_only_says_so(cli, tmp_path, placements):
    np.save(tmp_path / "load.npy", np.ones((4, 16)))
    res = cli("evaluate", "--load", tmp_path / "load.npy", placements["greedy"])
    assert res.code == 0, res.err
    assert "only load balance was evaluated" in " ".join(res.out.split())
    d = json.loads(cli("evaluate", "--load", tmp_path / "load.npy", placements["greedy"], "--json").out)
    assert d["balance_only"] and d["placements"][0]["summary"]["mean_imbalance"] == pytest.approx(1.0)


def test_evaluate_sums_repeated_loads_as_solve_does(cli, tmp_path):
    """--load a --load b: summed (the help's "repeatable: summed, or each one a scenario"), as in solve."""
    a, b = np.array([[10, 1, 1, 8], [1, 1, 1, 1]], dtype=float), np.array([[0, 9, 9, 2], [4, 1, 1, 1]], dtype=float)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "ab.npy", a + b)
    assert cli("solve", "--load", tmp_path / "a.npy", "--solver", "greedy", "--gpus", "2",
               "--out", tmp_path / "p.json").code == 0
    both = cli("evaluate", "--load", tmp_path / "a.npy", "--load", tmp_path / "b.npy", tmp_path / "p.json", "--json")
    assert both.code == 0, both.err
    summed = json.loads(cli("evaluate", "--load", tmp_path / "ab.npy", tmp_path / "p.json", "--json").out)
    d = json.loads(both.out)
    assert d["placements"][0]["summary"] == summed["placements"][0]["summary"]
    assert d["input"].endswith("a.npy + " + str(tmp_path / "b.npy"))


# ---------------------------------------------------------------------------------------------------
# Bad input: one line naming the values
# ---------------------------------------------------------------------------------------------------


def _write(path, d):
    path.write_text(json.dumps(d))
    return path


def test_evaluate_placement_for_another_shape(cli, trace, tmp_path, placements):
    d = placement_to_dict(load_placement(placements["greedy"]))
    d["phy2log"] = d["phy2log"][:3]
    d["num_layers"] = 3
    d["model_layer_indices"] = None
    bad = _write(tmp_path / "three.json", d)
    assert_one_line_error(cli("evaluate", trace, bad), 2, "three.json",
                          "placement has 3 layers x 16 experts", "4 layers x 16 experts")


def test_evaluate_slot_out_of_range_and_missing_expert(cli, trace, tmp_path, placements):
    d = placement_to_dict(load_placement(placements["greedy"]))
    d["phy2log"][1][5] = 16
    assert_one_line_error(cli("evaluate", trace, _write(tmp_path / "oob.json", d)), 2,
                          "oob.json", "layer 1, slot 5 holds expert 16, outside [0, 16)")
    d = placement_to_dict(load_placement(placements["greedy"]))
    missing = d["phy2log"][2][0]
    d["phy2log"][2] = [e if e != missing else (missing + 1) % 16 for e in d["phy2log"][2]]
    assert_one_line_error(cli("evaluate", trace, _write(tmp_path / "miss.json", d)), 2,
                          "miss.json", f"layer 2: expert {missing} has no slot")


def test_evaluate_more_experts_than_slots(cli, trace, tmp_path, placements):
    d = placement_to_dict(load_placement(placements["greedy"]))
    d["phy2log"] = [r[:12] for r in d["phy2log"]]
    for k in ("num_slots", "slots_per_gpu", "num_redundant"):
        d.pop(k)
    assert_one_line_error(cli("evaluate", trace, _write(tmp_path / "few.json", d)), 2,
                          "few.json", "slots per layer (12) fewer than experts (16)")


def test_evaluate_placements_that_do_not_fit_each_other(cli, trace, tmp_path, placements):
    out = tmp_path / "eight.json"
    assert cli("solve", trace, "--solver", "greedy", "--gpus", "8", "--out", out).code == 0
    assert_one_line_error(cli("evaluate", trace, placements["greedy"], out), 2,
                          "eight.json", "8 GPUs in 1 node(s)", "4 GPUs in 1 node(s)")
    assert_one_line_error(cli("evaluate", trace, placements["greedy"], "--gpus", "8"), 2,
                          "topology has 8 GPUs in 1 node(s), the placements 4 GPUs in 1 node(s)")


def test_evaluate_usage_errors(cli, trace, placements, tmp_path):
    assert_one_line_error(cli("evaluate", trace), 2, "give a trace and at least one placement")
    assert_one_line_error(cli("evaluate", tmp_path / "none.parquet", placements["greedy"]), 2,
                          "none.parquet", "trace file not found")
    assert_one_line_error(cli("evaluate", trace, tmp_path / "none.json"), 2, "none.json", "placement file not found")
    assert_one_line_error(cli("evaluate", trace, placements["greedy"], "--tokens-per-step", "0"), 2,
                          "--tokens-per-step must be positive, got 0")


@pytest.mark.parametrize("args, fragments", [
    (["--gpus", "4"], ["give the input as trace file(s), --stats FILE(s) or --load FILE(s)"]),
    (["TRACE", "--gpus", "4", "--redundant", "1"], ["experts (16) + redundant (1) must divide by gpus (4)"]),
    (["TRACE", "--gpus", "4", "--nodes", "3"], ["gpus (4) must divide evenly into nodes (3)"]),
    (["TRACE", "--gpus", "4", "--redundant", "-4"], ["redundant (-4) must be >= 0"]),
    (["TRACE"], ["give the GPUs with --gpus G"]),
    (["TRACE", "--gpus", "4", "--solver", "nope"], ["unknown solver 'nope'", "greedy"]),
    (["TRACE", "--gpus", "4", "--groups", "2"], ["--groups applies to eplb, not auto"]),
    (["TRACE", "--gpus", "4", "--solver", "eplb", "--groups", "3"],
     ["eplb: experts (16) must divide evenly into groups (3)"]),
])
def test_solve_errors(cli, trace, tmp_path, args, fragments):
    args = [str(trace) if a == "TRACE" else a for a in args]
    res = cli("solve", *args, "--out", tmp_path / "p.json")
    assert_one_line_error(res, 2, *fragments)
    assert not (tmp_path / "p.json").exists()


def test_solve_bad_load_and_topology_files(cli, tmp_path):
    np.save(tmp_path / "neg.npy", -np.ones((2, 4)))
    assert_one_line_error(cli("solve", "--load", tmp_path / "neg.npy", "--gpus", "2", "--out", tmp_path / "p.json"),
                          2, "neg.npy", "array[0, 0] = -1.0 is negative")
    np.save(tmp_path / "flat.npy", np.ones(4))
    assert_one_line_error(cli("solve", "--load", tmp_path / "flat.npy", "--gpus", "2", "--out", tmp_path / "p.json"),
                          2, "flat.npy", "shape [4], expected [layers, experts]")
    (tmp_path / "topo.json").write_text(json.dumps({"num_gpus": 12, "num_nodes": 5}))
    np.save(tmp_path / "load.npy", np.ones((2, 12)))
    assert_one_line_error(cli("solve", "--load", tmp_path / "load.npy", "--topology", tmp_path / "topo.json",
                              "--out", tmp_path / "p.json"), 2, "topo.json", "gpus (12) must divide evenly into nodes (5)")
    (tmp_path / "topo.json").write_text(json.dumps({"num_gpus": 4}))
    assert_one_line_error(cli("solve", "--load", tmp_path / "load.npy", "--topology", tmp_path / "topo.json",
                              "--gpus", "8", "--out", tmp_path / "p.json"), 2,
                          "topo.json", "field 'num_gpus' is 4, but --gpus is 8")


def test_click_usage_errors_exit_2(cli):
    res = cli("evaluate")  # a missing argument: typer's own (vendored click) usage error
    assert res.code == 2 and "Missing argument" in res.err and "internal error" not in res.err
    res = cli("solve", "--bogus")
    assert res.code == 2 and "No such option" in res.err


def test_readme_held_out_example(cli, tmp_path):
    """The README's worked example: greedy and eplb solved on the bundled train trace, evaluated on the held-out
    one (the README shows the table)."""
    from pathlib import Path

    traces = Path(__file__).resolve().parents[1] / "traces"
    for name, extra in (("greedy", []), ("eplb", ["--redundant", "4"])):
        res = cli("solve", traces / "train.parquet", "--solver", name, "--gpus", "4", *extra,
                  "--out", tmp_path / f"{name}.json")
        assert res.code == 0, res.err
    res = cli("evaluate", traces / "heldout.parquet", tmp_path / "greedy.json", tmp_path / "eplb.json", "--json")
    assert res.code == 0, res.err
    got = {p["name"]: p["summary"] for p in json.loads(res.out)["placements"]}
    assert got["greedy"]["mean_imbalance"] == pytest.approx(1.068, abs=5e-4)
    assert got["eplb"]["mean_imbalance"] == pytest.approx(1.044, abs=5e-4)
    assert got["contiguous"]["mean_imbalance"] == pytest.approx(1.179, abs=5e-4)
    assert got["greedy"]["remote_gpus_per_token"] == pytest.approx(1.377, abs=5e-4)
    assert got["eplb"]["remote_gpus_per_token"] == pytest.approx(1.314, abs=5e-4)
