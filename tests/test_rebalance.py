"""Rebalance: a budget of moves from the current placement towards a full re-solve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.moves import align, count_moves
from placer.core.placement_io import load_placement, save_placement
from placer.core.stats.core import compute_stats
from placer.core.topology import Topology
from placer.core.trace.reader import concat_batches
from placer.synth import SynthConfig, generate
from solvers import PlacementProblem, SolveOptions, get_solver
from solvers.rebalance import Budget, Rebalancer, _judge, rebalance
from tests.conftest import assert_one_line_error


def _windows(seed=1, L=4, E=32, K=2, G=4, N=2, R=4, tokens=16000):
    """The first and second half of a drifting synthetic trace, as placement problems."""
    _, bs = generate(SynthConfig(layers=L, experts=E, top_k=K, tokens=tokens, seed=seed, domains=3, drift=0.4,
                                 drift_periods=2, seq_len=100, clusters=4))
    b = concat_batches(list(bs))
    half = len(b) // 2

    def problem(rows):
        st = compute_stats([b.select(rows)], L, E, K)
        return PlacementProblem(st.load_LE, Topology(G, N), num_redundant=R, top_k=K, coact_LEE=st.coact_LEE,
                                trans_LEE=st.trans_LEE)

    return problem(np.arange(half)), problem(np.arange(half, len(b)))


@pytest.fixture(scope="module")
def case():
    old, new = _windows()
    current = get_solver("eplb")(old)
    target = get_solver("greedy")(new)
    return old, new, current, target


def test_a_zero_budget_returns_the_current_placement(case):
    _, new, current, target = case
    p = rebalance([new], current, target, Budget(per_layer=0), SolveOptions())
    assert p == current and count_moves(current, p).total == 0
    assert p.report.extra["moves"]["moves"] == 0
    # Nothing moves, so the full re-solve is not needed; it is for any other budget.
    q = rebalance([new], current, None, Budget(total=0), SolveOptions())
    assert q == current and q.report.extra["target"] is None
    assert q.report.objective_value == pytest.approx(p.report.objective_value)
    with pytest.raises(ValueError, match="unless the budget is 0"):
        rebalance([new], current, None, Budget(per_layer=1), SolveOptions())


@pytest.mark.parametrize("per_layer,total", [(1, None), (2, None), (None, 3), (2, 5)])
def test_the_budget_holds_and_the_objective_never_gets_worse(case, per_layer, total):
    _, new, current, target = case
    p = rebalance([new], current, target, Budget(per_layer, total), SolveOptions())
    moved = count_moves(current, p)  # counted between the two files as they stand
    if per_layer is not None:
        assert moved.moves_L.max() <= per_layer
    if total is not None:
        assert moved.total <= total
    extra = p.report.extra
    assert p.report.objective_value <= extra["current_objective"] + 1e-9
    assert extra["moves"]["moves"] == moved.total
    # Every expert keeps at least one copy and every GPU its slots (Placement validates both).
    assert p.num_slots == current.num_slots and (p.logcnt_LE >= 1).all()


def test_more_budget_recovers_more_of_the_full_resolve(case):
    _, new, current, target = case
    p = rebalance([new], current, target, Budget(), SolveOptions(), pareto=[0, 1, 2, 4, 8])
    front = p.report.extra["pareto"]
    assert [f["budget"] for f in front] == [0, 1, 2, 4, 8, "full re-solve"]
    objectives = [f["objective"] for f in front[:-1]]
    assert objectives[0] == pytest.approx(p.report.extra["current_objective"])
    assert all(b <= a + 1e-9 for a, b in zip(objectives, objectives[1:]))  # a larger budget never hurts
    assert objectives[-1] < objectives[0]
    assert all(f["moves"] <= f["budget"] for f in front[:-1])


def test_cli_writes_the_new_placement_in_current_gpu_order_and_the_front(cli, tmp_path, case):
    old, new, current, _ = case
    cur = save_placement(current, tmp_path / "cur.json")
    trace = _trace(tmp_path, 4000)
    out = tmp_path / "new.json"
    res = cli("rebalance", cur, trace, "--max-moves-per-layer", 2, "--solver", "greedy", "--pareto",
              "--expert-bytes", 1000, "-o", out, "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)
    p = load_placement(out)
    assert count_moves(current, p).total == s["moves"]["moves"] <= 2 * 4
    assert s["moves"]["bytes"]["total"] == 1000.0 * s["moves"]["moves"]
    assert (tmp_path / "new.pareto.json").is_file() and (tmp_path / "new.pareto.png").stat().st_size > 1000
    front = json.loads((tmp_path / "new.pareto.json").read_text())["front"]
    assert front[-1]["budget"] == "full re-solve"
    # Every point's bytes, inside nodes and across, as the summary's (expert bytes x moves).
    for point in front:
        b = point["bytes"]
        assert b["total"] == 1000.0 * point["moves"] == b["intra_node"] + b["inter_node"]
        assert b["inter_node"] == 1000.0 * point["inter_node_moves"]


@pytest.mark.parametrize("args, fragments", [
    ([], ["give a budget"]),
    (["--max-moves-per-layer", "-1"], ["must be a whole number >= 0, got -1"]),
    (["--max-moves", "1", "--robust", "worst"], ["--robust needs --scenarios"]),
    (["--max-moves", "1", "--expert-bytes", "0"], ["--expert-bytes must be positive"]),
])
def test_bad_requests_are_one_line(cli, tmp_path, case, args, fragments):
    cur = save_placement(case[2], tmp_path / "cur.json")
    np.save(tmp_path / "load.npy", case[1].load_LE)
    res = cli("rebalance", cur, "--load", tmp_path / "load.npy", "-o", tmp_path / "new.json", *args)
    assert_one_line_error(res, 2, *fragments)
    assert not (tmp_path / "new.json").exists()


def test_a_placement_of_another_shape_is_refused(cli, tmp_path, case):
    cur = save_placement(case[2], tmp_path / "cur.json")
    np.save(tmp_path / "load.npy", np.ones((3, 32)))
    res = cli("rebalance", cur, "--load", tmp_path / "load.npy", "--max-moves", 1, "-o", tmp_path / "new.json")
    assert_one_line_error(res, 2, "the current placement has 4 layers x 32 experts, the new traffic 3 x 32")


def test_rebalance_never_puts_a_second_copy_of_an_expert_on_a_gpu(case):
    _, new, current, target = case
    p = rebalance([new], current, target, Budget(per_layer=4), SolveOptions())
    assert (p.same_gpu_copies_LG <= current.same_gpu_copies_LG).all()


@pytest.fixture(scope="module")
def far_target(case):
    """A full re-solve much better than the greedy's steps reach (auto): the steps stall well short of it."""
    _, new, current, _ = case
    target = get_solver("auto")(new, SolveOptions(time_limit_s=2))
    aligned = align(current, target)
    return target, count_moves(current, aligned).moves_L, _judge([new], np.ones(1), SolveOptions(), aligned)


@pytest.mark.parametrize("per_layer,total", [(None, 1000), (40, None), (40, 1000)])
def test_a_budget_the_full_resolve_fits_ends_no_worse_than_it(case, far_target, per_layer, total):
    _, new, current, _ = case
    target, _, full = far_target
    p = rebalance([new], current, target, Budget(per_layer, total), SolveOptions())
    assert p.report.objective_value <= full.value + 1e-6
    assert p.report.extra["target"]["objective"] == pytest.approx(full.value)
    moved = count_moves(current, p)
    assert moved.total <= (total or 10**9) and moved.moves_L.max() <= (per_layer or 10**9)


def test_the_front_takes_the_target_layers_that_fit_each_budget(case, far_target):
    _, new, current, _ = case
    target, target_L, full = far_target
    counts = [0, 1, 2, 4, 8, 16, 32, 64, 128]
    assert target_L.sum() <= 128
    p = rebalance([new], current, target, Budget(), SolveOptions(), pareto=counts)
    front = p.report.extra["pareto"][:-1]
    objectives = [f["objective"] for f in front]
    assert all(b <= a + 1e-9 for a, b in zip(objectives, objectives[1:]))  # a larger budget never hurts
    assert all(f["moves"] <= f["budget"] for f in front)
    # Never worse than the greedy's steps cut at the same count, better where target layers fit, and the whole
    # target where it fits.
    _, snaps = Rebalancer([new], np.ones(1), current, target, SolveOptions()).run(Budget(), record=counts)
    steps = [_judge([new], np.ones(1), SolveOptions(), current.with_(phy2log_LP=snap)).value for _, snap in snaps]
    assert all(f <= s + 1e-6 for f, s in zip(objectives, steps))
    assert any(f < s - 1e-6 for f, s in zip(objectives, steps))
    assert objectives[-1] <= full.value + 1e-6


@pytest.mark.parametrize("total", [None, 60])
def test_layers_whose_target_fits_the_per_layer_budget_take_it_where_it_scores_better(case, far_target, total):
    """ep is separable by layer: no layer whose target row fits the per-layer budget ends worse than that row
    (while the total budget allows), and the whole never ends worse than the greedy's steps alone."""
    _, new, current, _ = case
    target, target_L, full = far_target
    k = int(np.sort(target_L)[1])  # some layers' target rows fit, some not
    budget = Budget(per_layer=k, total=total)
    rows, _ = Rebalancer([new], np.ones(1), current, target, SolveOptions()).run(budget)
    steps = _judge([new], np.ones(1), SolveOptions(), current.with_(phy2log_LP=rows))
    p = rebalance([new], current, target, budget, SolveOptions())
    got = _judge([new], np.ones(1), SolveOptions(), p)
    moved = count_moves(current, p)
    assert moved.moves_L.max() <= k and moved.total <= (total or 10**9)
    assert got.value <= steps.value + 1e-6 and got.value == pytest.approx(p.report.objective_value)
    took = p.report.extra["took_target"]
    assert took is not None and took != "all"
    assert all(target_L[l] <= k for l in took)
    assert (p.phy2log_LP[took] == align(current, target).phy2log_LP[took]).all()
    if total is None:
        fits = target_L <= k
        assert (got.value_L[fits] <= full.value_L[fits] + 1e-6).all()


@pytest.mark.parametrize("args", [["--max-moves", 0], ["--max-moves-per-layer", 0],
                                  ["--max-moves", 0, "--scenarios", "window:1000"]])
def test_a_zero_budget_keeps_current_without_solving(cli, tmp_path, case, monkeypatch, args):
    from solvers.registry import SolverSpec

    def refuse(*_a, **_k):
        raise AssertionError("a budget of 0 must not run the full re-solve")

    monkeypatch.setattr(SolverSpec, "__call__", refuse)
    monkeypatch.setattr(SolverSpec, "solve_scenarios", refuse)
    _, new, current, _ = case
    cur = save_placement(current, tmp_path / "cur.json")
    trace = _trace(tmp_path, 3000)
    res = cli("rebalance", cur, trace, *args, "-o", tmp_path / "new.json", "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)
    assert s["moves"]["moves"] == 0 and s["target"] is None and s["took_target"] is None
    assert s["objective"] == pytest.approx(s["current_objective"])
    assert (load_placement(tmp_path / "new.json").phy2log_LP == current.phy2log_LP).all()
    res = cli("rebalance", cur, trace, *args, "-o", tmp_path / "new2.json")
    assert res.code == 0, res.err
    assert "not computed with a budget of 0" in " ".join(res.out.split())


def _trace(tmp_path, tokens):
    from placer.core.trace.writer import TraceWriter

    meta, batches = generate(SynthConfig(layers=4, experts=32, top_k=2, tokens=tokens, seed=3, clusters=4))
    trace = tmp_path / "new.parquet"
    with TraceWriter(trace, meta) as w:
        for b in batches:
            w.write(b)
    return trace


def test_the_steps_and_the_front_stop_at_the_deadline(case):
    """A deadline already past: no step is taken and no point of the front beyond the first is measured, the
    report says so, and the result is still a valid placement within the budget (CURRENT here)."""
    import time

    _, new, current, target = case
    p = rebalance([new], current, target, Budget(per_layer=4), SolveOptions(), pareto=[0, 1, 2, 4],
                  deadline=time.perf_counter())
    stopped = p.report.extra["stopped_by_time"]
    assert "steps" in stopped and any(s.startswith("front") for s in stopped)
    assert count_moves(current, p).total == 0
    assert [pt["budget"] for pt in p.report.extra["pareto"]] == ["full re-solve"]
    # Without a deadline the same call takes steps and measures the whole front.
    q = rebalance([new], current, target, Budget(per_layer=4), SolveOptions(), pareto=[0, 1, 2, 4])
    assert q.report.extra["stopped_by_time"] == [] and count_moves(current, q).total > 0
    assert len(q.report.extra["pareto"]) == 5


def test_rebalance_keeps_its_time_limit(cli, tmp_path, case):
    """--time-limit covers the whole rebalance (re-solve, steps, front) after reading the inputs: the report's
    wall time stays within the limit plus 10 %."""
    _, new, current, _ = case
    cur = save_placement(current, tmp_path / "cur.json")
    trace = _trace(tmp_path, 20000)
    res = cli("rebalance", cur, trace, "--max-moves-per-layer", 4, "--pareto", "--time-limit", 2,
              "-o", tmp_path / "new.json")
    assert res.code == 0, res.err
    wall = load_placement(tmp_path / "new.json").report.wall_time_s
    assert wall <= 2 * 1.1, wall
