"""Rebalance: a budget of moves from the current placement towards a full re-solve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.moves import count_moves
from placer.core.placement_io import load_placement, save_placement
from placer.core.stats.core import compute_stats
from placer.core.topology import Topology
from placer.core.trace.reader import concat_batches
from placer.synth import SynthConfig, generate
from solvers import PlacementProblem, SolveOptions, get_solver
from solvers.rebalance import Budget, rebalance
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
    from placer.core.trace.writer import TraceWriter

    cur = save_placement(current, tmp_path / "cur.json")
    meta, batches = generate(SynthConfig(layers=4, experts=32, top_k=2, tokens=4000, seed=3, clusters=4))
    trace = tmp_path / "new.parquet"
    with TraceWriter(trace, meta) as w:
        for b in batches:
            w.write(b)
    out = tmp_path / "new.json"
    res = cli("rebalance", cur, trace, "--max-moves-per-layer", 2, "--solver", "greedy", "--pareto",
              "--expert-bytes", 1000, "-o", out, "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)
    p = load_placement(out)
    assert count_moves(current, p).total == s["moves"]["moves"] <= 2 * 4
    assert s["moves"]["bytes"]["total"] == 1000.0 * s["moves"]["moves"]
    assert (tmp_path / "new.pareto.json").is_file() and (tmp_path / "new.pareto.png").stat().st_size > 1000
    assert json.loads((tmp_path / "new.pareto.json").read_text())["front"][-1]["budget"] == "full re-solve"


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
