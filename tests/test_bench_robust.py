"""``moeplace bench robust`` runs end to end on a small shape (the recorded figures come from the full command)."""

from __future__ import annotations

import json


def test_bench_robust_small(cli):
    res = cli("bench", "robust", "--layers", 3, "--experts", 16, "--top-k", 2, "--gpus", 4, "--nodes", 2,
              "--redundant", 4, "--windows", 3, "--tokens-per-window", 2000, "--time-limit", 2, "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert [r["placement"] for r in d["solve"]] == ["robust auto", "eplb (sum)", "auto (sum)"]
    for r in d["solve"]:
        assert 1.0 <= r["train_mean"] <= r["train_worst"] and 1.0 <= r["heldout_mean"] <= r["heldout_worst"]
    rb = d["rebalance"]
    assert rb["rebalance_moves"] <= rb["budget_per_layer"] * 3 / (20 * 3) + 1e-9  # the budget held
    assert rb["rebalanced"] <= rb["current"] + 1e-9
