"""Moves between placements: counted GPU by GPU, GPUs matched to make them fewest (checked against every
renaming on small cases), bytes inside and across nodes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from placer.core.cost import evaluate_load
from placer.core.moves import align, count_moves, gpu_matching
from placer.core.placement import Placement


def test_worked_example_by_hand():
    # GPU 0 holds {0, 1, 2}, GPU 1 {3, 0, 0}; NEW: GPU 0 {3, 0, 1}, GPU 1 {2, 0, 1}.
    cur = Placement([[0, 1, 2, 3, 0, 0]], num_gpus=2, num_experts=4)
    new = Placement([[3, 0, 1, 2, 0, 1]], num_gpus=2, num_experts=4)
    m = count_moves(cur, new)
    # As the files stand: GPU 0 gains 3, GPU 1 gains 2 and 1.
    assert m.total == 3 and m.intra_L.tolist() == [3] and m.inter_L.tolist() == [0]
    # Matched: NEW's GPU 0 -> CURRENT's GPU 1 (gains 1), NEW's GPU 1 -> GPU 0 (gains nothing).
    assert gpu_matching(cur, new).tolist() == [1, 0]
    a = align(cur, new)
    assert a.phy2log_LP.tolist() == [[0, 1, 2, 3, 0, 1]]  # experts GPU 0 already held stay in their slots
    assert count_moves(cur, a).total == 1
    assert count_moves(cur, cur).total == 0


def test_moves_across_nodes_are_counted_as_network_bytes():
    # 4 GPUs in 2 nodes (GPUs 0-1, 2-3), two slots each: CURRENT holds {0, 1} {2, 3} | {4, 5} {6, 7}.
    cur = Placement([[0, 1, 2, 3, 4, 5, 6, 7]], num_gpus=4, num_experts=8, num_nodes=2)
    new = Placement([[4, 1, 0, 3, 2, 5, 6, 7]], num_gpus=4, num_experts=8, num_nodes=2)
    m = count_moves(cur, new)
    # GPU 0 gains 4 (only node 1 holds it: network), GPU 1 gains 0 (GPU 0 of its node holds it: NVLink),
    # GPU 2 gains 2 (only node 0 holds it: network).
    assert m.total == 3 and m.inter_L.tolist() == [2] and m.intra_L.tolist() == [1]
    assert m.to_dict(expert_bytes=10.0)["bytes"] == {"intra_node": 10.0, "inter_node": 20.0, "total": 30.0}


def _renamings(G: int, N: int):
    """Every renaming of GPUs that keeps nodes whole."""
    gpn = G // N
    for nodes in itertools.permutations(range(N)):
        for inner in itertools.product(*[list(itertools.permutations(range(gpn)))] * N):
            yield np.array([nodes[m] * gpn + inner[m][k] for m in range(N) for k in range(gpn)])


@pytest.mark.parametrize("G,N,E,R,seed", [(4, 1, 8, 0, 0), (4, 2, 8, 4, 1), (6, 3, 6, 6, 2), (4, 2, 12, 0, 3)])
def test_matching_is_the_fewest_moves_over_every_renaming(G, N, E, R, seed):
    rng = np.random.default_rng(seed)
    L, P = 3, E + R

    def random_placement():
        return Placement([rng.permutation(np.concatenate([np.arange(E), rng.integers(0, E, R)])) for _ in range(L)],
                         num_gpus=G, num_experts=E, num_nodes=N)

    cur, new = random_placement(), random_placement()
    spg = P // G
    best = min(count_moves(cur, new.with_(phy2log_LP=np.concatenate(
        [new.phy2log_LP[:, h * spg:(h + 1) * spg] for h in np.argsort(perm)], axis=1))).total
        for perm in _renamings(G, N))
    a = align(cur, new)
    assert count_moves(cur, a).total == best
    # The renaming changes no balance: every GPU keeps its experts, under another name.
    load = rng.integers(1, 100, size=(L, E)).astype(float)
    np.testing.assert_allclose(np.sort(evaluate_load(load, a).load_LG, axis=1),
                               np.sort(evaluate_load(load, new).load_LG, axis=1))


def test_placements_of_other_shapes_are_refused():
    a = Placement([[0, 1, 2, 3]], num_gpus=2, num_experts=4)
    with pytest.raises(ValueError, match="the current placement has 2 GPUs, the new one 4"):
        count_moves(a, Placement([[0, 1, 2, 3]], num_gpus=4, num_experts=4))


@pytest.mark.parametrize("scenarios", [[], ["--scenarios", "window:500"]])
def test_evaluate_moves_from_another_gpu_count_names_each_file_with_its_count(cli, tmp_path, scenarios):
    from placer.core.placement_io import save_placement
    from placer.core.trace.writer import TraceWriter
    from placer.synth import SynthConfig, generate
    from tests.conftest import assert_one_line_error

    meta, batches = generate(SynthConfig(layers=1, experts=4, top_k=2, tokens=1000, seed=1))
    trace = tmp_path / "t.parquet"
    with TraceWriter(trace, meta) as w:
        for b in batches:
            w.write(b)
    two = save_placement(Placement([[0, 1, 2, 3]], num_gpus=2, num_experts=4), tmp_path / "two.json")
    four = save_placement(Placement([[0, 1, 2, 3]], num_gpus=4, num_experts=4), tmp_path / "four.json")
    res = cli("evaluate", trace, four, "--moves-from", two, *scenarios)
    assert_one_line_error(res, 2, f"--moves-from {two} has 2 GPUs, {four} 4")
    res = cli("evaluate", trace, two, "--moves-from", four, *scenarios)
    assert_one_line_error(res, 2, f"--moves-from {four} has 4 GPUs, {two} 2")
