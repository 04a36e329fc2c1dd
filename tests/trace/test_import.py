"""Importing routing logs: long format (JSONL, CSV, Parquet), SGLang per-token dumps, dropped rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from placer.core.trace import TraceReader
from tests.conftest import assert_one_line_error

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "routing-log.jsonl"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_worked_example_jsonl_with_a_dropped_row(tmp_path, cli):
    """The worked example of docs/traces.md: 2 requests x 3 tokens, MoE layers 1-3, one row dropped by the log."""
    out = tmp_path / "ex.parquet"
    res = cli("import", EXAMPLE, "--num-experts", 8, "--out", out)
    assert res.code == 0, res.err
    assert "missing token-layers" in res.out
    r = TraceReader(out)
    assert r.meta.shape == (3, 8, 2)
    assert r.meta.moe_layer_indices == (1, 2, 3)
    b = r.read_all()
    # Tokens ordered by (sequence, token): req-a 0,1,2 then req-b 0,1,2.
    np.testing.assert_array_equal(b.seq_T, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(b.position_T, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(b.phase_T, [0, 0, 1, 0, 0, 1])
    assert b.present_TL.sum() == 17 and not b.present_TL[4, 1]  # req-b token 1 lost layer 2
    np.testing.assert_array_equal(b.experts_TLK[0], [[1, 5], [2, 6], [3, 7]])
    np.testing.assert_array_equal(b.experts_TLK[4, [0, 2]], [[0, 3], [5, 7]])
    np.testing.assert_allclose(b.weights_TLK[0, :, 0], [0.7, 0.6, 0.55], atol=1e-3)
    info = json.loads(cli("info", out, "--json").out)
    assert (info["tokens"], info["sequences"], info["missing_token_layers"]) == (6, 2, 1)
    assert info["tokens_with_missing_layers"] == 1 and info["missing_per_layer"] == [0, 1, 0]


def test_dropped_rows_never_pair_tokens(tmp_path):
    """Token 1 is missing at layer 1 and token 2 at layer 0: each keeps its own routing elsewhere."""
    rows = [
        {"token": 0, "layer": 0, "experts": [0, 1]}, {"token": 0, "layer": 1, "experts": [2, 3]},
        {"token": 1, "layer": 0, "experts": [4, 5]},
        {"token": 2, "layer": 1, "experts": [6, 7]},
    ]
    from placer.importers import import_long

    meta, b, rep = import_long([_jsonl(tmp_path / "d.jsonl", rows)])
    assert (rep.tokens, rep.missing_token_layers, rep.tokens_with_missing_layers) == (3, 2, 2)
    np.testing.assert_array_equal(b.present_TL, [[True, True], [True, False], [False, True]])
    np.testing.assert_array_equal(b.experts_TLK[1, 0], [4, 5])
    np.testing.assert_array_equal(b.experts_TLK[2, 1], [6, 7])
    assert meta.num_experts == 8 and rep.num_experts_inferred


def test_csv_with_custom_fields_and_string_lists(tmp_path, cli):
    p = tmp_path / "log.csv"
    p.write_text("req,tok,moe_layer,ids,gates\n"
                 "r1,0,5,\"[3, 1]\",\"0.9 0.1\"\n"
                 "r1,0,6,\"2;0\",\"0.5;0.5\"\n"
                 "r2,0,5,\"0 1\",\"0.8,0.2\"\n"
                 "r2,0,6,\"1 3\",\"0.6 0.4\"\n")
    out = tmp_path / "c.parquet"
    res = cli("import", p, "--layer-field", "moe_layer", "--token-field", "tok", "--experts-field", "ids",
              "--weights-field", "gates", "--sequence-field", "req", "--num-experts", 4, "--out", out)
    assert res.code == 0, res.err
    b = TraceReader(out).read_all()
    np.testing.assert_array_equal(b.experts_TLK, [[[3, 1], [2, 0]], [[0, 1], [1, 3]]])
    np.testing.assert_allclose(b.weights_TLK[0, 0], [0.9, 0.1], atol=1e-3)
    assert TraceReader(out).meta.moe_layer_indices == (5, 6)


def test_parquet_long_format(tmp_path, cli):
    t = pa.table({"layer": [0, 1, 0, 1], "token": [0, 0, 1, 1],
                  "experts": [[1, 2], [3, 0], [2, 3], [1, 0]]})
    pq.write_table(t, tmp_path / "l.parquet")
    res = cli("import", tmp_path / "l.parquet", "--out", tmp_path / "o.parquet")
    assert res.code == 0, res.err
    assert "num_experts inferred as 4" in res.out
    assert TraceReader(tmp_path / "o.parquet").num_tokens == 2


def test_bad_logs(tmp_path, cli):
    out = tmp_path / "out.parquet"
    good = [{"token": 0, "layer": 0, "experts": [0, 1]}, {"token": 1, "layer": 0, "experts": [1, 2]}]
    p = _jsonl(tmp_path / "a.jsonl", good)
    assert_one_line_error(cli("import", p, "--layer-field", "lyr", "--out", out), 2,
                          "a.jsonl", "field 'lyr' (--layer-field) not found", "token, layer, experts")
    assert_one_line_error(cli("import", p, "--weights-field", "w", "--out", out), 2, "field 'w'")
    short = _jsonl(tmp_path / "b.jsonl", good + [{"token": 2, "layer": 0, "experts": [3]}])
    assert_one_line_error(cli("import", short, "--out", out), 2, "record 2", "1 expert ids", "top_k = 2")
    assert_one_line_error(cli("import", p, "--num-experts", 2, "--out", out), 2,
                          "record 1", "expert id 2", "outside [0, 2)")
    neg = _jsonl(tmp_path / "n.jsonl", [{"token": 0, "layer": 0, "experts": [-1, 1]}])
    assert_one_line_error(cli("import", neg, "--out", out), 2, "record 0", "expert id -1")
    dup = _jsonl(tmp_path / "d.jsonl", good + [{"token": 1, "layer": 0, "experts": [1, 3]}])
    assert_one_line_error(cli("import", dup, "--out", out), 2, "records 1 and 2", "token=1")
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    assert_one_line_error(cli("import", empty, "--out", out), 2, "e.jsonl")
    assert_one_line_error(cli("import", tmp_path / "nope.jsonl", "--out", out), 2, "nope.jsonl", "not found")
    assert not out.exists()


def _sglang_dump(path, records, p2l=None):
    import torch

    data = {"records": records}
    if p2l is not None:
        data["last_physical_to_logical_map"] = torch.tensor(p2l)
    torch.save(data, path)
    return path


def test_sglang_per_token_dump(tmp_path, cli):
    """3 decoder layers (layer 0 dense: all -1), top-2 of 8 possible columns, 5 physical slots on 4 experts."""
    import torch

    def block(rows):  # rows: per token, per MoE layer (1, 2), the top-2 physical ids
        t = torch.full((3, len(rows), 8), -1, dtype=torch.int32)
        for i, r in enumerate(rows):
            t[1, i, :2] = torch.tensor(r[0])
            t[2, i, :2] = torch.tensor(r[1])
        return t

    p2l = [[0, 1, 2, 3, 0]] * 3  # slot 4 is a replica of expert 0
    rec0 = {"forward_pass_id": 0, "rank": 0, "input_ids": [11, 12, 13], "positions": [0, 1, 0],
            "extend_seq_lens": [2, 1], "forward_mode": 1,
            "topk_ids_of_layer": block([[(4, 1), (2, 3)], [(0, 2), (1, 3)], [(3, 2), (0, 1)]])}
    rec1 = {"forward_pass_id": 1, "rank": 0, "input_ids": [14, 15], "positions": [2, 1],
            "extend_seq_lens": None, "forward_mode": 2,
            "topk_ids_of_layer": block([[(1, 2), (3, 4)], [(2, 0), (1, 0)]])}
    dump = _sglang_dump(tmp_path / "expert_distribution_recorder_1.0_0.pt", [rec1, rec0], p2l)
    out = tmp_path / "s.parquet"
    res = cli("import", dump, "--out", out)
    assert res.code == 0, res.err
    r = TraceReader(out)
    assert r.meta.shape == (2, 4, 2) and r.meta.moe_layer_indices == (1, 2)
    b = r.read_all()
    np.testing.assert_array_equal(b.experts_TLK[0], [[0, 1], [2, 3]])  # physical 4 -> logical 0
    np.testing.assert_array_equal(b.experts_TLK[3], [[1, 2], [3, 0]])
    np.testing.assert_array_equal(b.seq_T, [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(b.phase_T, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(b.token_T, [11, 12, 13, 14, 15])
    np.testing.assert_allclose(b.weights_TLK, 0.5, atol=1e-3)
    bad = tmp_path / "stat.pt"
    torch.save({"rank": 0, "logical_count": torch.zeros(2, 3, 4)}, bad)
    assert_one_line_error(cli("import", bad, "--out", out), 2, "stat.pt", "no 'records' key", "logical_count")
