"""Load-only inputs: load matrices and SGLang stat dumps; what needs affinity says it is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from placer.core.errors import InputError
from placer.core.stats import load_only_stats, load_stats
from tests.conftest import assert_one_line_error

LOAD = np.array([[4, 0, 2, 2], [1, 3, 3, 1], [0, 0, 6, 2]])


def test_npy_csv_and_pt_matrices_give_the_same_load(tmp_path):
    np.save(tmp_path / "l.npy", LOAD)
    (tmp_path / "l.csv").write_text("e0,e1,e2,e3\n" + "\n".join(",".join(map(str, r)) for r in LOAD) + "\n")
    np.savetxt(tmp_path / "plain.csv", LOAD.astype(float), delimiter=",")
    torch.save(torch.tensor(LOAD, dtype=torch.int32), tmp_path / "l.pt")
    for name in ("l.npy", "l.csv", "plain.csv", "l.pt"):
        s = load_only_stats(tmp_path / name, top_k=2)
        np.testing.assert_array_equal(s.load_LE, LOAD, err_msg=name)
        assert s.load_only and s.coact_LEE is None and s.trans_LEE is None
        np.testing.assert_array_equal(s.tokens_L, [4, 4, 4])
        assert s.shape == (3, 4, 2)


def test_sglang_stat_dump_sums_steps_and_drops_dense_layers(tmp_path):
    # [steps, layers, experts]: model layers 0 and 1 are dense (all zero), 2..4 are MoE layers.
    steps = np.zeros((3, 5, 4), dtype=np.int32)
    steps[:, 2:] = np.stack([LOAD, 2 * LOAD, 0 * LOAD])  # per-step counts of the MoE layers
    steps[2, 2:] = LOAD
    dump = {"rank": 0, "logical_count": torch.tensor(steps), "average_utilization_rate_over_window": None}
    torch.save(dump, tmp_path / "expert_distribution_recorder_1.pt")
    s = load_only_stats(tmp_path / "expert_distribution_recorder_1.pt", top_k=2)
    np.testing.assert_array_equal(s.load_LE, steps.sum(0)[2:])
    assert s.moe_layer_indices == (2, 3, 4)
    assert s.extra["load_source"] == "sglang-stat" and s.extra["steps"] == 3
    assert any("2 all-zero layers" in n for n in s.extra["notes"])
    # Older dumps: [layers, experts] already summed.
    torch.save({"logical_count": LOAD.tolist()}, tmp_path / "old.pt")
    np.testing.assert_array_equal(load_only_stats(tmp_path / "old.pt").load_LE, LOAD)


def test_top_k_unknown_is_said(tmp_path):
    np.save(tmp_path / "l.npy", LOAD)
    s = load_only_stats(tmp_path / "l.npy")
    assert s.tokens_L is None and s.extra["top_k_known"] is False
    assert any("top-k unknown" in n for n in s.extra["notes"])


@pytest.mark.parametrize("name,make,fragments", [
    ("v.npy", lambda p: np.save(p, np.arange(4)), ("shape [4]", "[layers, experts]")),
    ("n.npy", lambda p: np.save(p, -LOAD), ("is negative",)),
    ("f.npy", lambda p: np.save(p, LOAD / 3), ("not a whole number",)),
    ("x.csv", lambda p: p.write_text("a,b\nc,d\n"), ("not a comma-separated matrix",)),
    ("r.pt", lambda p: torch.save({"records": []}, p), ("per_token dump", "moeplace import")),
    ("k.pt", lambda p: torch.save({"foo": 1}, p), ("no 'logical_count'", "foo")),
    ("z.pt", lambda p: torch.save({"logical_count": torch.zeros(2, 3, 4)}, p), ("all zero",)),
    ("l.txt", lambda p: p.write_text("1 2"), ("unknown load file type '.txt'",)),
    ("s.npz", lambda p: p.write_bytes(b"PK"), ("a stats file, not a load file", "moeplace stats s.npz")),
])
def test_bad_load_files(tmp_path, cli, name, make, fragments):
    make(tmp_path / name)
    res = cli("stats", "--load", tmp_path / name, "--json")
    assert_one_line_error(res, 2, name, *fragments)


def test_cli_load_only_summary_and_stats_file(tmp_path, cli):
    np.save(tmp_path / "l.npy", LOAD)
    res = cli("stats", "--load", tmp_path / "l.npy", "--top-k", "2", "--out", tmp_path / "s.npz", "--json")
    assert res.code == 0, res.err
    summary = json.loads(res.out)
    assert summary["load_only"] is True and summary["tokens"] == 4
    assert "pairs" not in summary
    assert summary["layers"]["imbalance"] == [2.0, 1.5, 3.0]
    s = load_stats(tmp_path / "s.npz")
    assert s.load_only
    np.testing.assert_array_equal(s.load_LE, LOAD)
    # Downstream code that needs affinity refuses it with a clear message.
    with pytest.raises(InputError, match="needs co-activation and transition counts.*loads only"):
        s.require_affinity("the coherent solver")
    res = cli("stats", "--load", tmp_path / "l.npy", "--graph", tmp_path / "g.graphml")
    assert_one_line_error(res, 2, "--graph needs co-activation", "l.npy")
    assert not (tmp_path / "g.graphml").exists()
    # Plots of load-only statistics: the load heatmap only.
    res = cli("stats", "--load", tmp_path / "l.npy", "--plots", tmp_path / "plots")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["load.png"]
