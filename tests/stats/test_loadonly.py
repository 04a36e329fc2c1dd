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
    ("f.npy", lambda p: np.save(p, np.array([[1.0, np.nan]])), ("array[0, 1] = nan", "must be finite")),
    ("i.json", lambda p: p.write_text('{"logical_count": [[1, Infinity]]}'), ("logical_count[0, 1] = inf",)),
    ("p.json", lambda p: p.write_text('{"physical_to_logical_map": [[0, 1]]}'),
     ("an SGLang placement", "import-placement --format sglang")),
    ("l.json", lambda p: p.write_text("[[1, 2]]"), ("holds a JSON list", "logical_count")),
    ("g.json", lambda p: p.write_text('{"logical_count": [[1, 2], [3]]}'), ("'logical_count' is not a matrix",)),
    ("b.json", lambda p: p.write_text('{"logical_count": '), ("not valid JSON",)),
    ("s.json", lambda p: p.write_text('{"logical_count": [["a", "b"]]}'), ("'logical_count' is not a matrix",)),
    ("x.csv", lambda p: p.write_text("a,b\nc,d\n"), ("not a comma-separated matrix",)),
    ("r.pt", lambda p: torch.save({"records": []}, p), ("per_token dump", "moeplace import")),
    ("k.pt", lambda p: torch.save({"foo": 1}, p), ("no 'logical_count'", "foo")),
    ("z.pt", lambda p: torch.save({"logical_count": torch.zeros(2, 3, 4)}, p), ("all zero",)),
    ("l.txt", lambda p: p.write_text("1 2"), ("unknown load file type '.txt'", ".json")),
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


def test_sglang_logical_count_json_as_passed_to_init_expert_location(tmp_path):
    """``{"logical_count": [[...] x num_layers]}``, float values, dense layers all zero (SGLang 0.5.23
    ``compute_initial_expert_location_metadata`` reads it with json.loads; ``init_by_eplb`` adds a steps axis to a
    2-D count): the same statistics as the recorder's .pt dump of the same counts."""
    rows = np.zeros((5, 4))
    rows[2:] = LOAD
    (tmp_path / "lc.json").write_text(json.dumps({"logical_count": rows.tolist()}))  # 0.0, 4.0, ...
    torch.save({"rank": 0, "logical_count": torch.tensor(rows[None], dtype=torch.int32),
                "average_utilization_rate_over_window": None}, tmp_path / "lc.pt")
    (tmp_path / "steps.json").write_text(json.dumps({"logical_count": [rows.tolist(), np.zeros((5, 4)).tolist()]}))
    for name in ("lc.json", "lc.pt", "steps.json"):
        s = load_only_stats(tmp_path / name, top_k=2)
        assert s.load_LE.dtype == np.int64 and not s.real_valued, name  # whole floats are token counts
        np.testing.assert_array_equal(s.load_LE, LOAD, err_msg=name)
        assert s.moe_layer_indices == (2, 3, 4), name
        np.testing.assert_array_equal(s.tokens_L, [4, 4, 4])
    assert load_only_stats(tmp_path / "lc.json").extra["load_source"] == "sglang-json"


def test_real_valued_loads_serve_balance_and_say_tokens_are_unknown(tmp_path, cli):
    """Rates or averages (selection frequencies, mean router probabilities, the mean of several windows) are
    kept as float64; counts stay exact int64."""
    rates = LOAD / LOAD.sum(axis=1, keepdims=True)   # selection frequencies
    np.save(tmp_path / "r.npy", rates)
    (tmp_path / "r.json").write_text(json.dumps({"logical_count": [[0.0] * 4] + rates.tolist()}))
    s = load_only_stats(tmp_path / "r.npy", top_k=2)
    assert s.real_valued and s.load_LE.dtype == np.float64
    np.testing.assert_array_equal(s.load_LE, rates)
    assert s.tokens_L is None and s.tokens == 0 and s.top_k == 2
    assert s.extra["load_values"] == "real" and any("real-valued loads" in n for n in s.extra["notes"])
    j = load_only_stats(tmp_path / "r.json")
    np.testing.assert_array_equal(j.load_LE, rates)
    assert j.moe_layer_indices == (1, 2, 3)

    # The stats file keeps them as float64 (counts stay unsigned integers), and merging adds them as reals.
    res = cli("stats", "--load", tmp_path / "r.npy", "--load", tmp_path / "r.npy", "--out", tmp_path / "s.npz",
              "--json")
    assert res.code == 0, res.err
    back = load_stats(tmp_path / "s.npz")
    assert back.real_valued and back.load_only
    np.testing.assert_allclose(back.load_LE, 2 * rates, rtol=0, atol=1e-15)
    assert json.loads(res.out)["layers"]["imbalance"] == pytest.approx([2.0, 1.5, 3.0])
    np.save(tmp_path / "c.npy", LOAD)
    mixed = load_stats_of(cli, tmp_path, tmp_path / "r.npy", tmp_path / "c.npy")
    np.testing.assert_allclose(mixed.load_LE, LOAD + rates)
    assert any("token counts and real-valued loads added together" in n for n in mixed.extra["notes"])


def load_stats_of(cli, tmp_path, *loads):
    args = [a for p in loads for a in ("--load", p)]
    res = cli("stats", *args, "--out", tmp_path / "m.npz", "--json")
    assert res.code == 0, res.err
    return load_stats(tmp_path / "m.npz")


def test_a_stats_file_holds_real_loads_only_as_load_only_statistics(tmp_path):
    """A float load_LE beside co-activation and transition counts is a tampered file: refused."""
    from placer.core.stats import RoutingStats, save_stats

    s = RoutingStats.empty(2, 4, 2)
    s.load_LE = s.load_LE + 0.5
    save_stats(tmp_path / "t.npz", s)
    with pytest.raises(InputError, match="array 'load_LE' holds float64, expected integer counts"):
        load_stats(tmp_path / "t.npz")


def test_solve_evaluate_and_export_real_valued_loads(tmp_path, cli):
    """Rates go through solve, evaluate and export; the dense layers of an SGLang file come back in model
    numbering, as the trivial placement (sglang) or zero load (sglang-eplb)."""
    rates = LOAD / 8.0 + 0.01
    (tmp_path / "r.json").write_text(json.dumps({"logical_count": [[0.0] * 4, [0.0] * 4] + rates.tolist()}))
    res = cli("solve", "--load", tmp_path / "r.json", "--gpus", 2, "--solver", "cpsat", "--out", tmp_path / "p.json",
              "--json")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["status"] in ("OPTIMAL", "FEASIBLE") and out["input_load_only"]
    res = cli("evaluate", "--load", tmp_path / "r.json", tmp_path / "p.json", "--per-layer")
    assert res.code == 0, res.err
    assert "0.52" in res.out  # loads below one token are shown, not rounded to 0 or 1
    res = cli("export", tmp_path / "p.json", "--format", "sglang", "--out", tmp_path / "sg.json")
    assert res.code == 0, res.err
    rows = json.loads((tmp_path / "sg.json").read_text())["physical_to_logical_map"]
    assert len(rows) == 5 and rows[0] == rows[1] == [0, 1, 2, 3]
    res = cli("export", tmp_path / "r.json", "--format", "sglang-eplb", "--out", tmp_path / "lc.json")
    assert res.code == 0, res.err
    lc = json.loads((tmp_path / "lc.json").read_text())["logical_count"]
    assert lc[:2] == [[0.0] * 4] * 2 and np.allclose(lc[2:], rates)
