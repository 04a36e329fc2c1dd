"""The baseline solvers: worked examples, DeepSeek's published EPLB example, invariants of every solver."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.topology import preset
from solvers import SOLVER_NAMES, PlacementProblem, SolveOptions, get_solver
from solvers.layout import pack_balanced, replicate_hottest

BASELINES = ("contiguous", "round_robin", "random", "greedy", "eplb")

# DeepSeek's worked example (README of github.com/deepseek-ai/EPLB): 2 layers of 12 experts, 16 replicas,
# 4 expert groups, 2 nodes, 8 GPUs.
EPLB_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
               [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
EPLB_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def solve(name, load, gpus, nodes=1, redundant=0, **params):
    prob = PlacementProblem(np.asarray(load, dtype=float), preset(gpus, nodes), num_redundant=redundant)
    return get_solver(name)(prob, SolveOptions(seed=params.pop("seed", 0), params=params))


def test_every_baseline_is_registered():
    assert set(BASELINES) <= set(SOLVER_NAMES)


def test_eplb_reproduces_deepseeks_published_example():
    p = solve("eplb", EPLB_WEIGHT, gpus=8, nodes=2, redundant=4, groups=4)
    np.testing.assert_array_equal(p.phy2log_LP, EPLB_PHY2LOG)
    assert p.report.extra == {"groups": 4, "policy": "hierarchical"} and p.report.status == "HEURISTIC"
    # Groups stay whole inside nodes: node 0 (slots 0-7) holds only experts of two groups of 3.
    for row in p.phy2log_LP:
        assert len({e // 3 for e in row[:8]}) == 2 and len({e // 3 for e in row[8:]}) == 2


def test_eplb_global_policy_when_groups_do_not_divide_nodes():
    glob = solve("eplb", EPLB_WEIGHT, gpus=8, nodes=2, redundant=4, groups=3)
    one = solve("eplb", EPLB_WEIGHT, gpus=8, nodes=1, redundant=4, groups=1)
    np.testing.assert_array_equal(glob.phy2log_LP, one.phy2log_LP)
    assert glob.report.extra["policy"] == "global"
    # Global replication gives the 4 extra copies to the hottest experts per replica of each layer.
    np.testing.assert_array_equal(np.sort(glob.logcnt_LE[0]), [1] * 8 + [2] * 4)
    assert set(np.nonzero(glob.logcnt_LE[0] == 2)[0]) == {1, 4, 5, 10}


def test_eplb_bad_groups():
    with pytest.raises(ValueError, match=r"experts \(12\) must divide evenly into groups \(5\)"):
        solve("eplb", EPLB_WEIGHT, gpus=4, groups=5)
    with pytest.raises(ValueError, match="groups must be a positive integer, got 0"):
        solve("eplb", EPLB_WEIGHT, gpus=4, groups=0)


def test_greedy_by_hand():
    # Loads 10, 1, 1, 8 on 2 GPUs of 2 slots: 10 -> GPU 0, 8 -> GPU 1, 1 -> GPU 1 (9 < 10), 1 -> GPU 0 (GPU 1 full).
    p = solve("greedy", [[10, 1, 1, 8]], gpus=2)
    np.testing.assert_array_equal(p.phy2log_LP, [[0, 2, 3, 1]])
    # With 2 redundant slots expert 0 (load 12) gets one extra copy (12 > 4), and then, at one copy per GPU,
    # expert 3 (4 > 2): replicas 6 (e0), 6 (e0), 2, 2, 2 (e3), 2 (e3) -> GPUs 0, 1, 0, 1, 0, 1 (the second
    # copy of e3 avoids the GPU holding the first).
    p = solve("greedy", [[12, 2, 2, 4]], gpus=2, redundant=2)
    np.testing.assert_array_equal(p.phy2log_LP, [[0, 1, 3, 0, 2, 3]])
    np.testing.assert_allclose(p.gpu_load_LG(np.array([[12, 2, 2, 4]])), [[10, 10]])


def test_round_robin_by_hand():
    p = solve("round_robin", np.ones((1, 8)), gpus=4)
    np.testing.assert_array_equal(p.phy2log_LP, [[0, 4, 1, 5, 2, 6, 3, 7]])
    # Redundant copies of experts 0..3 go to the next GPU with room that does not hold them.
    p = solve("round_robin", np.ones((1, 8)), gpus=4, redundant=4)
    np.testing.assert_array_equal(p.phy2log_LP, [[0, 4, 3, 1, 5, 0, 2, 6, 1, 3, 7, 2]])


def test_helpers():
    # Extra copies: e1 (9 is the largest), e1 again (4.5 > 4), then e2 (4 > 3 = 9 / 3).
    phy, cnt = replicate_hottest(np.array([3.0, 9.0, 4.0]), 6)
    np.testing.assert_array_equal(phy, [0, 1, 2, 1, 1, 2])
    np.testing.assert_array_equal(cnt, [1, 3, 2])
    # 5 -> pack 0; 4 -> pack 1; 2 -> pack 1 (4 < 5), now full; 1 -> pack 0.
    pack, rank = pack_balanced(np.array([5.0, 1.0, 4.0, 2.0]), 2, 2)
    np.testing.assert_array_equal(pack, [0, 0, 1, 1])
    np.testing.assert_array_equal(rank, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="3 items do not fill 2 packs of 2"):
        pack_balanced(np.ones(3), 2, 2)


SHAPES = [  # layers, experts, gpus, nodes, redundant
    (3, 8, 4, 1, 0),
    (3, 8, 4, 2, 4),
    (2, 12, 8, 2, 4),
    (2, 16, 4, 1, 8),
    (2, 6, 3, 1, 3),
    (2, 10, 4, 2, 2),  # experts do not divide by GPUs: redundant slots fill the gaps
]


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("L, E, G, N, R", SHAPES)
def test_invariants_of_every_baseline(name, L, E, G, N, R):
    load = np.random.default_rng(L * E + G).zipf(1.5, size=(L, E)).astype(float)
    p = solve(name, load, G, N, R)
    P = E + R
    assert p.phy2log_LP.shape == (L, P) and (p.num_gpus, p.num_nodes, p.slots_per_gpu) == (G, N, P // G)
    for l in range(L):
        assert set(p.phy2log_LP[l]) == set(range(E)), "every expert placed in every layer"
        assert np.bincount(p.gpu_of_slot(), minlength=G).tolist() == [P // G] * G
    np.testing.assert_allclose(p.gpu_load_LG(load).sum(1), load.sum(1))  # loads add up
    assert p.report.solver == name and p.report.status == "HEURISTIC" and p.report.wall_time_s >= 0
    assert solve(name, load, G, N, R) == p, "same inputs and seed, same placement"


def test_load_aware_baselines_balance_better():
    load = np.random.default_rng(0).zipf(1.3, size=(6, 32)).astype(float)
    imb = {}
    for name in BASELINES:
        gl = solve(name, load, 8, redundant=8).gpu_load_LG(load)
        imb[name] = float((gl.max(1) / gl.mean(1)).mean())
    assert imb["greedy"] < imb["contiguous"] and imb["eplb"] < imb["contiguous"]
    assert imb["greedy"] < imb["round_robin"] and imb["greedy"] < imb["random"]


def test_random_depends_on_the_seed():
    load = np.ones((3, 16))
    a, b = solve("random", load, 4, seed=1), solve("random", load, 4, seed=2)
    assert a != b and a.report.extra == {"seed": 1}


def test_two_copies_of_one_expert_on_one_gpu_are_counted_warned_and_reported(cli, tmp_path):
    """DeepSeek's EPLB can put two copies of one expert on one GPU (its golden example does): solve warns with the
    count, evaluate reports it per placement."""
    from placer.core.placement import Placement

    p = Placement([[0, 0, 1, 2, 3, 1]], num_gpus=2, num_experts=4)  # GPU 0: 0, 0, 1; GPU 1: 2, 3, 1
    assert p.same_gpu_copies_LG.tolist() == [[1, 0]]
    load = np.array([[90.0, 10.0, 10.0, 10.0]] * 3)
    np.save(tmp_path / "load.npy", load)
    res = cli("solve", "--load", tmp_path / "load.npy", "--gpus", 2, "--redundant", 4, "--solver", "eplb",
              "-o", tmp_path / "e.json", "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)
    # Five copies of expert 0 on two GPUs of four slots: at least three share a GPU with another copy.
    assert s["same_gpu_copies"] >= 3
    assert f"warning: {s['same_gpu_copies']} slot(s) hold a second copy" in res.err
    from placer.core.placement_io import load_placement, save_placement

    save_placement(p.with_(phy2log_LP=[[0, 0, 1, 2, 3, 1]] * 3), tmp_path / "twice.json")
    d = json.loads(cli("evaluate", "--load", tmp_path / "load.npy", tmp_path / "twice.json", "--json").out)
    assert d["placements"][0]["same_gpu_copies"] == 3
    assert "2nd copies" in cli("evaluate", "--load", tmp_path / "load.npy", tmp_path / "twice.json").out
    assert load_placement(tmp_path / "e.json").same_gpu_copies_LG.sum() == s["same_gpu_copies"]
