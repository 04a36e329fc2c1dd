"""The Placement dataclass, its JSON file, and the topology it is solved for."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.errors import InputError
from placer.core.objective import Objective, Quantity
from placer.core.placement import Placement, SolveReport
from placer.core.placement_io import load_placement, placement_to_dict, save_placement
from placer.core.topology import Topology, home_gpu, preset
from tests.conftest import assert_one_line_error


def _p(**kw):
    base = dict(phy2log_LP=[[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 3]], num_gpus=2, num_experts=4)
    return Placement(**{**base, **kw})


def test_derived_maps_by_hand():
    p = _p()
    assert (p.num_layers, p.num_slots, p.slots_per_gpu, p.num_redundant) == (2, 6, 3, 2)
    np.testing.assert_array_equal(p.gpu_of_slot(), [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(p.logcnt_LE, [[2, 2, 1, 1], [1, 1, 1, 3]])
    np.testing.assert_array_equal(p.log2phy_LER()[1, 3], [0, 4, 5])
    np.testing.assert_array_equal(p.log2phy_LER()[0, 0], [0, 4, -1])
    # Layer 1, load 6 on expert 3 split evenly over slots 0 (GPU 0), 4 and 5 (GPU 1): 2 + 4.
    load = np.array([[1, 1, 1, 1], [0, 0, 0, 6]])
    np.testing.assert_allclose(p.gpu_load_LG(load), [[0.5 + 0.5 + 1, 1 + 0.5 + 0.5], [2, 4]])


@pytest.mark.parametrize("kw, msg", [
    (dict(phy2log_LP=[[0, 1, 2, 2]], num_gpus=2), "layer 0: expert 3 has no slot"),
    (dict(phy2log_LP=[[0, 1, 2, 4]], num_gpus=2), "holds expert 4, outside [0, 4)"),
    (dict(phy2log_LP=[[0, 1, 2, 3, 0]], num_gpus=2), "experts (4) + redundant (1) = 5 slots must divide by gpus (2)"),
    (dict(phy2log_LP=[[0, 1, 2]], num_gpus=1), "slots per layer (3) fewer than experts (4)"),
    (dict(num_nodes=3), "gpus (2) must divide evenly into nodes (3)"),
])
def test_invalid_placements_name_the_values(kw, msg):
    with pytest.raises(ValueError) as e:
        _p(**kw)
    assert msg in str(e.value)


def test_json_round_trip_and_validation(tmp_path, cli):
    report = SolveReport(solver="greedy", objective=Objective.of(Quantity.MAX_LOAD), objective_value=3.0)
    p = _p(report=report, topology=preset(2), model_layer_indices=(3, 4))
    path = save_placement(p, tmp_path / "p.json")
    back = load_placement(path)
    assert back == p and back.report == report and back.topology == p.topology
    assert back.model_layer_indices == (3, 4)
    d = json.loads(path.read_text())
    assert d["phy2log"] == [[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 3]] and d["num_gpus"] == 2
    d["phy2log"][1][2] = -1
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match=r"p.json: field 'phy2log\[1\]\[2\]': -1 is less than the minimum of 0"):
        load_placement(path)
    d = placement_to_dict(p)
    d["status"] = "GREAT"
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match="field 'status'"):
        load_placement(path)
    d = placement_to_dict(p)
    d["phy2log"][0] = [0, 1, 2, 2, 0, 1]
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match="p.json: layer 0: expert 3 has no slot"):
        load_placement(path)


def test_topology_validation_and_homes():
    t = preset(16, 2)
    assert t.gpus_per_node == 8 and list(t.node_of_gpu()[[0, 7, 8, 15]]) == [0, 0, 1, 1]
    with pytest.raises(InputError, match=r"gpus \(12\) must divide evenly into nodes \(5\)"):
        preset(12, 5)
    with pytest.raises(InputError, match="unknown field"):
        Topology.from_dict({"num_gpus": 4, "gpus": 4})
    np.testing.assert_array_equal(home_gpu(np.array([0, 1, 2, 3, 4, 5]), 4), [0, 1, 2, 3, 0, 1])


def test_registry_and_contiguous():
    from solvers import SOLVER_NAMES, PlacementProblem, SolveOptions, get_solver

    assert "contiguous" in SOLVER_NAMES
    prob = PlacementProblem(np.ones((2, 8)), preset(4), num_redundant=4)
    p = get_solver("contiguous")(prob, SolveOptions())
    np.testing.assert_array_equal(p.phy2log_LP[0], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"experts \(8\) \+ redundant \(1\) must divide by gpus \(4\)"):
        PlacementProblem(np.ones((2, 8)), preset(4), num_redundant=1)
    with pytest.raises(ValueError, match="unknown solver 'nope'"):
        get_solver("nope")


def test_replica_rule_is_token_index_mod_count():
    p = Placement([[0, 1, 2, 3, 0, 0]], num_gpus=2, num_experts=4)  # expert 0 on slots 0, 4, 5
    slots = p.slots_for_tokens(0, np.array([[0, 1], [0, 2], [0, 3], [0, 1]]), np.array([0, 1, 2, 3]))
    np.testing.assert_array_equal(slots, [[0, 1], [4, 2], [5, 3], [0, 1]])


def test_time_model():
    t = preset(8)
    np.testing.assert_allclose(t.expert_time_us([0, 16, 256]), [0, 75, 75])  # flat floor below the knee
    big = t.expert_time_us(16384)
    assert big == pytest.approx(16384 * 6 * 7168 * 2048 / 600e12 * 1e6)  # linear above it
    assert t.link_time_us(450e3, 0, 1, 0) == pytest.approx(1.0 + 3.0)  # 450 kB over 450 GB/s + latency
