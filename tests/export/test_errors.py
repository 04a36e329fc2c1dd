"""Bad files and options: one line naming the file, the field and the value; exit 2; nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.placement import Placement
from placer.core.placement_io import save_placement
from tests.conftest import assert_one_line_error


@pytest.fixture
def placement_file(tmp_path):
    p = Placement(phy2log_LP=[[1, 0, 0, 2, 3, 1], [3, 2, 1, 0, 3, 3]], num_gpus=2, num_experts=4)
    return save_placement(p, tmp_path / "p.json")


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def test_unknown_format_and_wrong_ending(cli, placement_file, tmp_path):
    res = cli("export", placement_file, "--format", "deepspeed", "--out", tmp_path / "x.json")
    assert_one_line_error(res, 2, "unknown format 'deepspeed'", "sglang, sglang-eplb, vllm, vllm-ascend, eplb, trtllm, moeplace")
    res = cli("export", placement_file, "--format", "trtllm", "--out", tmp_path / "x.json")
    assert_one_line_error(res, 2, "x.json", "trtllm file is written as .yaml or .yml")
    res = cli("import-placement", tmp_path / "x.json", "--format", "nope", "--out", tmp_path / "y.json")
    assert_one_line_error(res, 2, "unknown format 'nope'")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_model_numbering_needs_the_model_layer_indices(cli, placement_file, tmp_path):
    res = cli("export", placement_file, "--format", "sglang", "--out", tmp_path / "s.json")
    assert_one_line_error(res, 2, "records no model layer indices", "--moe-layers")
    res = cli("export", placement_file, "--format", "sglang", "--moe-layers", "1,3", "--num-model-layers", "3",
              "--out", tmp_path / "s.json")
    assert_one_line_error(res, 2, "--num-model-layers 3 leaves out MoE layer 3")
    res = cli("export", placement_file, "--format", "sglang", "--moe-layers", "1-x", "--out", tmp_path / "s.json")
    assert_one_line_error(res, 2, "--moe-layers: '1-x' is not a layer list")
    res = cli("export", placement_file, "--format", "moeplace", "--layer-numbering", "model", "--out", tmp_path / "m.json")
    assert_one_line_error(res, 2, "does not apply to the moeplace format")
    assert not any(tmp_path.glob("s.json")) and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("content, fragments", [
    ({"physical_to_logical_map": [[0, 1, 2, 3]], "num_gpus": 2}, ["field 'num_gpus' is not part of", "init_by_mapping"]),
    ({"logical_count": [[[1, 2, 3, 4]]]}, ["holds 'logical_count'", "not a placement"]),
    ({"physical_to_logical_map": [[0, 1, 2, 3], [0, 1]]}, ["field 'physical_to_logical_map' has rows of different lengths"]),
    ({"physical_to_logical_map": [0, 1, 2, 3]}, ["field 'physical_to_logical_map' has shape [4]", "[layers, physical slots]"]),
    ({"physical_to_logical_map": [[0, 1, -2, 3]]}, ["field 'physical_to_logical_map[0][2]' is -2"]),
    ({"physical_to_logical_map": [[0, 1, 1, 3]]}, ["layer 0: expert 2 has no slot"]),
    ({"physical_to_logical_map": [[0, 1, 2, 3, 0, 1]]}, ["6 slots must divide by gpus (4)"]),
    ({"physical_to_logical_map": [[0.5, 1, 2, 3]]}, ["holds float64 values"]),
    ("[not json", ["not valid JSON"]),
])
def test_bad_sglang_files(cli, tmp_path, content, fragments):
    path = _write(tmp_path, "s.json", content)
    (tmp_path / "out.json").write_text("keep me")
    res = cli("import-placement", path, "--format", "sglang", "--layer-numbering", "moe", "--gpus", 4,
              "--out", tmp_path / "out.json")
    assert_one_line_error(res, 2, "s.json", *fragments)
    assert (tmp_path / "out.json").read_text() == "keep me"


def test_missing_expert_with_known_expert_count(cli, tmp_path):
    # Expert 3 of 4 is absent; only --experts (or a format that records the count) can tell.
    path = _write(tmp_path, "t.yaml", "num_slots: 4\ninitial_global_assignments:\n  5: [0, 1, 2, 2]\n")
    res = cli("import-placement", path, "--format", "trtllm", "--gpus", 2, "--experts", 4, "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "t.yaml", "layer 5: expert 3 has no slot")


def test_gpus_and_layers_options(cli, tmp_path):
    path = _write(tmp_path, "s.json", {"physical_to_logical_map": [[0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0]]})
    out = tmp_path / "o.json"
    assert_one_line_error(cli("import-placement", path, "--format", "sglang", "--out", out), 2,
                          "sglang files do not record the number of GPUs", "--gpus")
    assert_one_line_error(cli("import-placement", path, "--format", "sglang", "--gpus", 2, "--out", out), 2,
                          "say which are MoE layers with --moe-layers")
    assert_one_line_error(cli("import-placement", path, "--format", "sglang", "--gpus", 2, "--moe-layers", "1,9",
                              "--out", out), 2, "MoE layer 9 from --moe-layers is not in the file", "0-2")
    assert_one_line_error(cli("import-placement", path, "--format", "sglang", "--gpus", 2, "--layer-numbering", "moe",
                              "--moe-layers", "1,2", "--out", out), 2, "--moe-layers lists 2 layers, the file holds 3")
    assert not out.exists()
    res = cli("import-placement", path, "--format", "sglang", "--gpus", 2, "--moe-layers", "1-2", "--out", out)
    assert res.code == 0, res.err
    d = json.loads(out.read_text())
    assert d["phy2log"] == [[1, 0, 3, 2], [3, 2, 1, 0]] and d["model_layer_indices"] == [1, 2] and d["num_gpus"] == 2


def _vllm(p2l, l2p, cnt):
    return {"physical_to_logical_map": p2l, "logical_to_physical_map": l2p, "logical_replica_count": cnt}


@pytest.mark.parametrize("content, fragments", [
    (_vllm([[1, 0, 0, 2, 3, 1]], [[[1, 2], [0, 5], [3, -1], [4, -1]]], [[2, 2, 1, 1]]), None),
    (_vllm([[1, 0, 0, 2, 3, 1]], [[[1, 2], [0, 4], [3, -1], [4, -1]]], [[2, 2, 1, 1]]),
     ["field 'logical_to_physical_map[0][1]' is [0, 4]", "holds expert 1 in slots [0, 5]"]),
    (_vllm([[1, 0, 0, 2, 3, 1]], [[[1, 2], [0, 5], [3, -1], [4, -1]]], [[2, 1, 1, 1]]),
     ["field 'logical_replica_count[0][1]' is 1", "in 2 slots"]),
    (_vllm([[1, 0, 0, 2, 3, 1]], [[[-1, 1, 2], [0, 5, -1], [3, -1, -1], [4, -1, -1]]], [[2, 2, 1, 1]]),
     ["field 'logical_to_physical_map[0][0]' is [-1, 1, 2]"]),
    (_vllm([[1, 0, 0, 2, 3, 1]], [[[1, 2], [0, 5], [3, -1]]], [[2, 2, 1, 1]]),
     ["'logical_to_physical_map' has 3 experts per layer, 'logical_replica_count' 4"]),
    ({"physical_to_logical_map": [[0, 1]]}, ["field 'logical_to_physical_map' missing"]),
])
def test_vllm_files_must_be_consistent(cli, tmp_path, content, fragments):
    path = _write(tmp_path, "v.json", content)
    res = cli("import-placement", path, "--format", "vllm", "--gpus", 2, "--out", tmp_path / "o.json")
    if fragments is None:
        assert res.code == 0, res.err
    else:
        assert_one_line_error(res, 2, "v.json", *fragments)


def _ascend(devices_per_layer, count=None):
    layers = [{"layer_id": i, "device_count": len(devs), "device_list": [
        {"device_id": g, "device_expert": e} for g, e in enumerate(devs)]} for i, devs in enumerate(devices_per_layer)]
    return {"moe_layer_count": len(layers) if count is None else count, "layer_list": layers}


@pytest.mark.parametrize("content, fragments", [
    (_ascend([[[0, 1], [2, 3]]], count=2), ["field 'moe_layer_count' is 2 but layer_list has 1 layers"]),
    (_ascend([[[0, 1], [2]]]), ["field 'layer_list[0].device_list[1].device_expert' has 1 slots"]),
    (_ascend([[[0, 1], [2, 3]], [[0, 1, 2, 3]]]), ["field 'layer_list[1].device_count' is 1, layer_list[0] has 2"]),
    (_ascend([[[0, 1], [1, 3]]]), ["layer 0: expert 2 has no slot"]),
    ({"layers": []}, ["holds moe_layer_count and layer_list"]),
])
def test_bad_vllm_ascend_files(cli, tmp_path, content, fragments):
    path = _write(tmp_path, "a.json", content)
    res = cli("import-placement", path, "--format", "vllm-ascend", "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "a.json", *fragments)


def test_vllm_ascend_device_order(cli, tmp_path):
    d = _ascend([[[0, 1], [2, 3]]])
    d["layer_list"][0]["device_list"].reverse()
    res = cli("import-placement", _write(tmp_path, "a.json", d), "--format", "vllm-ascend", "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "device_list[0].device_id' is 1", "reads devices in list order")


@pytest.mark.parametrize("text, fragments", [
    ("num_slots: 6\ninitial_global_assignments:\n  3: [0, 1, 2, 3]\n", ["'initial_global_assignments[3]' has 4 slots but num_slots is 6"]),
    ("num_slots: 4\ninitial_global_assignments:\n  3: [0, 1, 2, 3]\nnum_experts: 4\n", ["field 'num_experts' is not part of", "MoeLoadBalancerConfig"]),
    ("num_slots: 4\nlayer_updates_per_iter: 1\n", ["'initial_global_assignments' missing", "online-balancer"]),
    ("num_slots: 4\ninitial_global_assignments:\n  three: [0, 1, 2, 3]\n", ["has key 'three'"]),
    ("initial_global_assignments: [1, 2]\n", ["must map layer index to a list of experts"]),
    ("num_slots: [4\n", ["not valid YAML"]),
])
def test_bad_trtllm_files(cli, tmp_path, text, fragments):
    res = cli("import-placement", _write(tmp_path, "t.yaml", text), "--format", "trtllm", "--gpus", 2,
              "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "t.yaml", *fragments)


def test_bad_binary_files(cli, tmp_path):
    (tmp_path / "e.pt").write_bytes(b"not a torch file")
    res = cli("import-placement", tmp_path / "e.pt", "--format", "eplb", "--gpus", 2, "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "e.pt", "not a readable torch file")
    np.savez(tmp_path / "e.npz", phy2log=np.array([[0, 1]]))
    res = cli("import-placement", tmp_path / "e.npz", "--format", "eplb", "--gpus", 2, "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "e.npz", "field 'log2phy' missing", "phy2log, log2phy, logcnt")
    res = cli("import-placement", tmp_path / "absent.pt", "--format", "eplb", "--gpus", 2, "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "absent.pt", "not found")


def test_cli_round_trip_prints_the_loading_flag(cli, tmp_path):
    p = Placement(phy2log_LP=[[1, 0, 0, 2, 3, 1], [3, 2, 1, 0, 3, 3]], num_gpus=2, num_experts=4,
                  model_layer_indices=(3, 4))
    src = save_placement(p, tmp_path / "p.json")
    res = cli("export", src, "--format", "sglang", "--out", tmp_path / "s.pt")
    assert res.code == 0, res.err
    assert f"--ep-num-redundant-experts 2 --init-expert-location {tmp_path / 's.pt'}" in res.out
    assert "--ep-size 2" in res.out and "3 dense layers hold the trivial placement" in res.out
    res = cli("import-placement", tmp_path / "s.pt", "--format", "sglang", "--gpus", 2, "--moe-layers", "3-4",
              "--out", tmp_path / "back.json")
    assert res.code == 0, res.err
    from placer.core.placement_io import load_placement

    assert load_placement(tmp_path / "back.json") == p
    res = cli("export", src, "--format", "trtllm", "--out", tmp_path / "t.yaml", "--json")
    d = json.loads(res.out)
    assert d["layers"] == [3, 4] and d["layer_numbering"] == "model" and "load_balancer: " in d["loads_with"]


def test_bad_layer_numbering_and_layer_order(cli, placement_file, tmp_path):
    res = cli("export", placement_file, "--format", "vllm", "--layer-numbering", "decoder", "--out", tmp_path / "v.json")
    assert_one_line_error(res, 2, "--layer-numbering: 'decoder' is not one of moe, model")
    d = _ascend([[[0, 1], [2, 3]], [[0, 1], [2, 3]]])
    d["layer_list"][1]["layer_id"] = 0
    res = cli("import-placement", _write(tmp_path, "a.json", d), "--format", "vllm-ascend", "--out", tmp_path / "o.json")
    assert_one_line_error(res, 2, "field 'layer_list[1].layer_id' is 0 after 0", "reads layers in list order")
