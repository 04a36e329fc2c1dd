"""``moeplace bench solve`` runs and reports every part (small sizes; the real figures are in BENCHMARKS.md)."""

from __future__ import annotations

import json

from tests.conftest import assert_one_line_error


def test_bench_solve_small(cli):
    res = cli("bench", "solve", "--part", "mixtral", "--part", "heldout", "--mixtral-tokens", "2000",
              "--mixtral-time-limit", "5", "--heldout-time-limit", "1", "--train", "missing.parquet", "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert [(r["gpus"], r["mode"]) for r in d["mixtral"]] == [(4, "ep"), (4, "coherent"), (8, "ep"), (8, "coherent")]
    for r in d["mixtral"]:
        assert r["auto"]["status"] == "OPTIMAL" and set(r["baselines"]) == {"contiguous", "round_robin", "random",
                                                                           "greedy", "eplb"}
        assert r["auto_vs_best_baseline"] <= 1.0 + 1e-9
    h = d["heldout"]
    assert h["source"].startswith("synthetic stand-in")
    assert [r["solver"] for r in h["ep"]["heldout"]][0] == "auto"
    assert [r["placement"] for r in h["redundant"]["rows"]] == ["auto", "auto --balance-weight 1000", "eplb"]


def test_bench_solve_unknown_part(cli):
    assert_one_line_error(cli("bench", "solve", "--part", "nope"), 2, "--part 'nope' is not one of mixtral")
