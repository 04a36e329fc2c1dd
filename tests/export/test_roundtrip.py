"""Export then import gives the same placement, for every format, encoding and layer numbering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.export import PLACEMENT_FORMATS, export_placement, import_placement, read_stack
from placer.export.registry import get_format
from placer.core.objective import Objective, Quantity
from placer.core.placement import Placement, SolveReport
from placer.core.topology import preset

# (format, file ending) for every encoding each format is written as.
ENCODINGS = [(f, s) for f in PLACEMENT_FORMATS for s in get_format(f).suffixes]


def _random_placement(L=4, E=8, G=4, R=4, seed=0, layers=(3, 4, 6, 7), one_copy_per_gpu=False, **kw) -> Placement:
    """Random rows with R copies of random experts; ``one_copy_per_gpu``: no GPU holds two copies of one expert
    (what vLLM-Ascend can represent)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(L):
        extra = rng.integers(0, E, R)  # hot experts get redundant copies
        row = rng.permutation(np.concatenate([np.arange(E), extra]))
        while one_copy_per_gpu and any(len(set(g)) < len(g) for g in row.reshape(G, -1).tolist()):
            row = rng.permutation(row)
        rows.append(row)
    return Placement(phy2log_LP=rows, num_gpus=G, num_experts=E, model_layer_indices=layers, **kw)


def _same(a: Placement, b: Placement) -> None:
    assert a == b, (a.phy2log_LP, b.phy2log_LP)
    assert a.model_layer_indices == b.model_layer_indices


# The moeplace format has no model numbering: it stores the model layer indices themselves.
@pytest.mark.parametrize("fmt, suffix, numbering",
                         [(f, s, n) for f, s in ENCODINGS for n in ("moe", "model") if (f, n) != ("moeplace", "model")])
@pytest.mark.parametrize("redundant", [0, 4])
def test_export_import_round_trip(tmp_path, fmt, suffix, numbering, redundant):
    p = _random_placement(R=redundant, seed=redundant, one_copy_per_gpu=fmt == "vllm-ascend")
    path = tmp_path / f"p{suffix}"
    r = export_placement(p, path, fmt, numbering)
    assert r.path == path and path.is_file()
    gpus = None if fmt in ("vllm-ascend", "moeplace") else p.num_gpus
    back = import_placement(path, fmt, numbering, moe_layers=list(p.model_layer_indices), gpus=gpus)
    _same(back, p)


def test_moeplace_format_keeps_everything(tmp_path):
    report = SolveReport(solver="greedy", status="FEASIBLE", objective=Objective.of(Quantity.MAX_LOAD),
                         objective_value=3.5, bound=3.0, gap=0.5 / 3.5)
    p = _random_placement(report=report, topology=preset(4))
    export_placement(p, tmp_path / "p.json", "moeplace")
    back = import_placement(tmp_path / "p.json", "moeplace")
    _same(back, p)
    assert back.report == report and back.topology == p.topology


def test_default_numbering_follows_each_stack(tmp_path):
    """SGLang and TensorRT-LLM count decoder layers, vLLM, vLLM-Ascend and EPLB MoE layers."""
    p = _random_placement(one_copy_per_gpu=True)
    expect = {"sglang": tuple(range(8)), "trtllm": (3, 4, 6, 7), "vllm": (0, 1, 2, 3), "vllm-ascend": (0, 1, 2, 3),
              "eplb": (0, 1, 2, 3), "moeplace": (0, 1, 2, 3)}
    for fmt in PLACEMENT_FORMATS:
        r = export_placement(p, tmp_path / f"{fmt}{get_format(fmt).suffixes[0]}", fmt)
        assert r.layer_ids == expect[fmt], fmt
    # Keyed formats under model numbering need no --moe-layers to come back: their keys are the MoE layers.
    for fmt in ("trtllm", "vllm-ascend"):
        export_placement(p, tmp_path / f"m-{fmt}{get_format(fmt).suffixes[0]}", fmt, "model")
        back = import_placement(tmp_path / f"m-{fmt}{get_format(fmt).suffixes[0]}", fmt, "model", gpus=4)
        _same(back, p)


def test_worked_example_sglang_model_numbering(tmp_path):
    """Two MoE layers at decoder layers 1 and 3 of a 4-layer model, 4 experts + 2 redundant on 2 GPUs."""
    p = Placement(phy2log_LP=[[1, 0, 0, 2, 3, 1], [3, 2, 1, 0, 3, 3]], num_gpus=2, num_experts=4,
                  model_layer_indices=(1, 3))
    export_placement(p, tmp_path / "s.json", "sglang")
    d = json.loads((tmp_path / "s.json").read_text())
    assert list(d) == ["physical_to_logical_map"]  # SGLang passes every key to init_by_mapping
    assert d["physical_to_logical_map"] == [
        [0, 1, 2, 3, 0, 1],  # decoder layer 0: dense, trivial placement (slot p holds expert p mod 4)
        [1, 0, 0, 2, 3, 1],  # MoE layer 0
        [0, 1, 2, 3, 0, 1],  # decoder layer 2: dense
        [3, 2, 1, 0, 3, 3],  # MoE layer 1
    ]
    # Without --moe-layers, the rows that differ from the trivial placement can be taken as MoE layers when asked.
    back = import_placement(tmp_path / "s.json", "sglang", "model", moe_layers="nontrivial", gpus=2)
    _same(back, p)


def test_worked_example_vllm_and_eplb_inverse_maps(tmp_path):
    p = Placement(phy2log_LP=[[1, 0, 0, 2, 3, 1]], num_gpus=2, num_experts=4)
    export_placement(p, tmp_path / "v.json", "vllm")
    d = json.loads((tmp_path / "v.json").read_text())
    assert d["logical_to_physical_map"] == [[[1, 2], [0, 5], [3, -1], [4, -1]]]
    assert d["logical_replica_count"] == [[2, 2, 1, 1]]
    export_placement(p, tmp_path / "e.npz", "eplb")
    with np.load(tmp_path / "e.npz") as z:
        assert sorted(z.files) == ["log2phy", "logcnt", "phy2log"]
        np.testing.assert_array_equal(z["log2phy"], d["logical_to_physical_map"])


def test_eplb_replica_order_is_accepted(tmp_path):
    """DeepSeek's rebalance_experts lists an expert's slots in replica order, not increasing order."""
    import torch

    p2l = torch.tensor([[1, 0, 0, 2, 3, 1]])
    l2p = torch.tensor([[[2, 1], [5, 0], [3, -1], [4, -1]]])
    cnt = torch.tensor([[2, 2, 1, 1]])
    torch.save({"phy2log": p2l, "log2phy": l2p, "logcnt": cnt}, tmp_path / "d.pt")
    back = import_placement(tmp_path / "d.pt", "eplb", gpus=2)
    np.testing.assert_array_equal(back.phy2log_LP, p2l.numpy())


def test_trtllm_and_vllm_ascend_files_by_hand(tmp_path):
    p = Placement(phy2log_LP=[[1, 0, 0, 2, 3, 1]], num_gpus=2, num_experts=4, model_layer_indices=(3,))
    export_placement(p, tmp_path / "t.yaml", "trtllm")
    assert (tmp_path / "t.yaml").read_text() == (
        "num_slots: 6\ninitial_global_assignments:\n  3: [1, 0, 0, 2, 3, 1]\nlayer_updates_per_iter: 0\n")
    q = Placement(phy2log_LP=[[1, 0, 3, 2, 0, 1]], num_gpus=2, num_experts=4, model_layer_indices=(3,))
    export_placement(q, tmp_path / "a.json", "vllm-ascend")
    d = json.loads((tmp_path / "a.json").read_text())
    assert d == {"moe_layer_count": 1, "layer_list": [{"layer_id": 0, "device_count": 2, "device_list": [
        {"device_id": 0, "device_expert": [1, 0, 3]}, {"device_id": 1, "device_expert": [2, 0, 1]}]}]}


@pytest.mark.parametrize("fmt, suffix", ENCODINGS)
def test_exports_are_reproducible_byte_for_byte(tmp_path, fmt, suffix):
    p = _random_placement(R=4, one_copy_per_gpu=fmt == "vllm-ascend")
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    export_placement(p, a, fmt)
    export_placement(p, b, fmt)
    assert a.read_bytes() == b.read_bytes()


def test_pt_files_load_as_the_stacks_load_them(tmp_path):
    """SGLang: torch.load(weights_only=True) gives a dict whose only key is physical_to_logical_map."""
    import torch

    p = _random_placement(R=4)
    export_placement(p, tmp_path / "s.pt", "sglang")
    d = torch.load(tmp_path / "s.pt", weights_only=True)
    assert list(d) == ["physical_to_logical_map"] and d["physical_to_logical_map"].shape == (8, 12)
    st = read_stack(tmp_path / "s.pt", "sglang")
    np.testing.assert_array_equal(st.phy2log_XP[[3, 4, 6, 7]], p.phy2log_LP)
