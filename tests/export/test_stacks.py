"""What each serving stack's current code needs beyond the file layout: SGLang's own EPLB fed moeplace's loads
(sglang-eplb), vLLM-Ascend's one slot per expert and device, TensorRT-LLM's keys for MTP layers.

Checked against sgl-project/sglang 0.5.23, vllm-project/vllm-ascend 0.23.0 to 0.30.0rc2, NVIDIA/TensorRT-LLM
main (docs/export.md names the files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from placer.core.placement import Placement
from placer.core.placement_io import load_placement, save_placement
from placer.core.stats import RoutingStats, load_only_stats, save_stats
from placer.export import export_loads, export_placement, import_placement
from tests.conftest import assert_one_line_error

# Two MoE layers at decoder layers 1 and 3 of a 4-layer model, 4 experts, top-2, 3 tokens per layer.
LOAD = np.array([[2, 1, 3, 0], [1, 1, 1, 3]])


def _stats(load=LOAD, layers=(1, 3)) -> RoutingStats:
    return RoutingStats(2, 4, 2, load_LE=np.asarray(load), tokens=3, tokens_L=np.array([3, 3]),
                        moe_layer_indices=layers, sources=("t.parquet",))


# -- sglang-eplb ---------------------------------------------------------------------------------------------------
def test_sglang_eplb_worked_example_by_hand(tmp_path):
    """Every decoder layer, dense ones all zero, one layer per line: the logical_count SGLang's init_by_eplb takes."""
    r = export_loads(_stats(), tmp_path / "lc.json", "sglang-eplb")
    assert (tmp_path / "lc.json").read_text() == (
        '{\n  "logical_count": [\n    [0,0,0,0],\n    [2,1,3,0],\n    [0,0,0,0],\n    [1,1,1,3]\n  ]\n}\n')
    assert r.layer_ids == (0, 1, 2, 3) and r.numbering == "model" and r.num_slots is None
    assert "2 dense layers hold zero load" in r.notes
    assert "--init-expert-location" in r.loads_with and "--enable-eplb" in r.loads_with
    assert "--eplb-rebalance-num-iterations" in r.loads_with
    # Read back as SGLang statistics: the same loads, the dense layers dropped, their decoder indices kept.
    back = load_only_stats(tmp_path / "lc.json", top_k=2)
    np.testing.assert_array_equal(back.load_LE, LOAD)
    assert back.moe_layer_indices == (1, 3) and list(back.tokens_L) == [3, 3]


def test_sglang_eplb_pt_loads_as_sglang_loads_it(tmp_path):
    """compute_initial_expert_location_metadata: torch.load(weights_only=True, map_location="cpu"), a dict whose
    'logical_count' goes to init_by_eplb (any tensor dtype: DeepSeek's algorithm takes weight.float())."""
    export_loads(_stats(), tmp_path / "lc.pt", "sglang-eplb", num_model_layers=5)
    d = torch.load(tmp_path / "lc.pt", weights_only=True, map_location="cpu")
    assert list(d) == ["logical_count"] and d["logical_count"].dtype == torch.int64
    assert d["logical_count"].shape == (5, 4) and d["logical_count"][[1, 3]].tolist() == LOAD.tolist()
    rates = _stats(LOAD / 3.0)
    export_loads(rates, tmp_path / "r.pt", "sglang-eplb")
    r = torch.load(tmp_path / "r.pt", weights_only=True)["logical_count"]
    assert r.dtype == torch.float64 and torch.allclose(r[[1, 3]], torch.tensor(LOAD / 3.0))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    export_loads(rates, a, "sglang-eplb")
    export_loads(rates, b, "sglang-eplb")
    assert a.read_bytes() == b.read_bytes()


def test_cli_exports_statistics_of_a_trace_a_stats_file_or_a_load_file(tmp_path, cli):
    from placer.synth import SynthConfig, generate
    from placer.core.trace.writer import TraceWriter

    meta, batches = generate(SynthConfig(layers=3, experts=8, top_k=2, tokens=300, seed=2))
    with TraceWriter(tmp_path / "t.parquet", meta) as w:
        for batch in batches:
            w.write(batch)
    res = cli("stats", tmp_path / "t.parquet", "--out", tmp_path / "s.npz", "--json")
    assert res.code == 0, res.err
    outs = []
    for src in (tmp_path / "t.parquet", tmp_path / "s.npz"):
        out = tmp_path / f"{src.stem}-lc.json"
        res = cli("export", src, "--format", "sglang-eplb", "--out", out)
        assert res.code == 0, res.err
        assert "--init-expert-location" in res.out and "--enable-eplb" in res.out
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    res = cli("export", tmp_path / "t-lc.json", "--format", "sglang-eplb", "--out", tmp_path / "again.json")
    assert res.code == 0, res.err and (tmp_path / "again.json").read_text() == outs[0]


def test_loads_and_placements_do_not_mix(tmp_path, cli):
    p = save_placement(Placement(phy2log_LP=[[0, 1, 2, 3]], num_gpus=2, num_experts=4), tmp_path / "p.json")
    save_stats(tmp_path / "s.npz", _stats())
    res = cli("export", p, "--format", "sglang-eplb", "--out", tmp_path / "x.json")
    assert_one_line_error(res, 2, "p.json: a moeplace placement, not expert loads")
    assert not (tmp_path / "x.json").exists()
    res = cli("export", tmp_path / "s.npz", "--format", "sglang", "--out", tmp_path / "x.json")
    assert_one_line_error(res, 2, "s.npz: statistics, not a placement", "--format sglang-eplb")
    with pytest.raises(Exception, match="sglang files hold a placement"):
        export_loads(_stats(), tmp_path / "x.json", "sglang")
    with pytest.raises(Exception, match="sglang-eplb files hold expert loads, not a placement"):
        export_placement(load_placement(p), tmp_path / "x.json", "sglang-eplb")
    export_loads(_stats(), tmp_path / "lc.json", "sglang-eplb")
    res = cli("import-placement", tmp_path / "lc.json", "--format", "sglang-eplb", "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "sglang-eplb files hold expert loads", "moeplace stats --load lc.json")
    res = cli("export", tmp_path / "s.npz", "--format", "sglang-eplb", "--mtp-layers", 1, "--out", tmp_path / "y.json")
    assert_one_line_error(res, 2, "--mtp-layers applies to placements")


# -- vLLM-Ascend ---------------------------------------------------------------------------------------------------
def test_vllm_ascend_refuses_two_copies_of_one_expert_on_a_device(tmp_path, cli):
    """vLLM-Ascend's init_eplb_config maps each device's experts to one slot each (expert_map[device_expert] =
    arange(slots)) and numbers slots by rank 0's distinct experts: a second copy on a device misroutes tokens."""
    p = Placement(phy2log_LP=[[0, 1, 2, 3, 0, 1], [1, 0, 0, 2, 3, 1]], num_gpus=2, num_experts=4,
                  model_layer_indices=(3, 5))
    src = save_placement(p, tmp_path / "p.json")
    res = cli("export", src, "--format", "vllm-ascend", "--out", tmp_path / "a.json")
    assert_one_line_error(res, 2, "layer 1 (model layer 5), device 0 holds expert 0 twice (slots 1, 2)",
                          "vLLM-Ascend keeps one slot per expert on a device")
    assert not (tmp_path / "a.json").exists()
    # Other stacks represent it (a wasted slot, not a misroute): they still export it.
    assert cli("export", src, "--format", "sglang", "--out", tmp_path / "s.json").code == 0
    # A hand-made file with such a device is refused on import too.
    d = {"moe_layer_count": 1, "layer_list": [{"layer_id": 0, "device_count": 2, "device_list": [
        {"device_id": 0, "device_expert": [1, 0, 0]}, {"device_id": 1, "device_expert": [2, 3, 1]}]}]}
    (tmp_path / "h.json").write_text(json.dumps(d))
    res = cli("import-placement", tmp_path / "h.json", "--format", "vllm-ascend", "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "h.json: layer 0, device 0 holds expert 0 twice (slots 1, 2)")


def test_vllm_ascend_hint_uses_the_eplb_config_form(tmp_path):
    p = Placement(phy2log_LP=[[1, 0, 3, 2, 0, 1]], num_gpus=2, num_experts=4)
    r = export_placement(p, tmp_path / "a.json", "vllm-ascend")
    config = r.loads_with.split("--additional-config '")[1].split("'")[0]
    assert json.loads(config) == {"eplb_config": {"expert_map_path": str(tmp_path / "a.json"),
                                                  "num_redundant_experts": 2}}
    assert "up to 0.12" in r.loads_with and '"init_redundancy_expert": 2' in r.loads_with


# -- TensorRT-LLM MTP layers ---------------------------------------------------------------------------------------
def test_trtllm_mtp_layers_get_keys_from_num_hidden_layers(tmp_path, cli):
    """TensorRT-LLM builds MTP layer i with decoder index num_hidden_layers + i and looks it up in
    initial_global_assignments (KeyError if absent): DeepSeek-V3's MoE layers 1 and 3 of 4 decoder layers, one
    MTP layer: key 4, in TensorRT-LLM's default layout (rank r holds (r * E // ep + i) % E)."""
    p = Placement(phy2log_LP=[[1, 0, 0, 2, 3, 1], [3, 2, 1, 0, 3, 3]], num_gpus=2, num_experts=4,
                  model_layer_indices=(1, 3))
    src = save_placement(p, tmp_path / "p.json")
    res = cli("export", src, "--format", "trtllm", "--mtp-layers", 1, "--out", tmp_path / "t.yaml")
    assert res.code == 0, res.err
    assert (tmp_path / "t.yaml").read_text() == (
        "num_slots: 6\ninitial_global_assignments:\n  1: [1, 0, 0, 2, 3, 1]\n  3: [3, 2, 1, 0, 3, 3]\n"
        "  4: [0, 1, 2, 2, 3, 0]\nlayer_updates_per_iter: 0\n")
    assert "1 MTP layer key(s) 4 hold TensorRT-LLM's default layout" in res.out
    # Without --mtp-layers the export says that MTP layers need keys; with --num-model-layers they follow it.
    res = cli("export", src, "--format", "trtllm", "--out", tmp_path / "u.yaml")
    assert "add --mtp-layers N" in res.out and "  4:" not in (tmp_path / "u.yaml").read_text()
    res = cli("export", src, "--format", "trtllm", "--mtp-layers", 2, "--num-model-layers", 6, "--out",
              tmp_path / "v.yaml", "--json")
    assert json.loads(res.out)["layers"] == [1, 3, 6, 7]
    # Reading such a file back: --moe-layers leaves the MTP keys out.
    back = import_placement(tmp_path / "t.yaml", "trtllm", moe_layers=[1, 3], gpus=2)
    assert back == p and back.model_layer_indices == (1, 3)
    res = cli("export", src, "--format", "sglang", "--mtp-layers", 1, "--out", tmp_path / "s.json")
    assert_one_line_error(res, 2, "--mtp-layers applies to trtllm, not sglang")
    res = cli("export", src, "--format", "trtllm", "--layer-numbering", "moe", "--mtp-layers", 1,
              "--out", tmp_path / "w.yaml")
    assert_one_line_error(res, 2, "--mtp-layers needs --layer-numbering model")
