"""``moeplace replay`` on the command line: the virtual backend end to end, and bad input refused with one
line before any rank process starts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.placement import Placement
from placer.core.placement_io import save_placement
from tests.conftest import assert_one_line_error


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if a rank process would be started."""
    import placer.replay.launch as launch_mod

    def boom(*a, **k):
        raise AssertionError("ranks were started")

    monkeypatch.setattr(launch_mod, "launch", boom)


def test_virtual_cli_json_and_report(cli, small_trace, placement_files, tmp_path):
    out = tmp_path / "r.json"
    res = cli("replay", small_trace, *placement_files, "--backend", "virtual", "--hidden", 32, "--ffn", 48,
              "--tokens-per-step", 200, "--steps", 3, "--warmup", 0, "--threads", 1, "--json", "--out", out)
    assert res.code == 0, res.err
    rep = json.loads(res.out)
    assert rep == json.loads(out.read_text())
    assert rep["backend"] == "virtual" and rep["communication"].startswith("modelled")
    assert rep["correct"] and [p["check"]["tokens_checked"] for p in rep["placements"]] == [600, 600]
    first, second = rep["placements"]
    assert first["speedup_vs_first"] == 1.0
    assert second["speedup_vs_first"] == pytest.approx(first["step_ms_median"] / second["step_ms_median"], rel=1e-2)
    assert len(first["layers"]) == 4 and len(first["ranks"]) == 4 and {r["node"] for r in first["ranks"]} == {0, 1}


def test_failed_check_is_one_line_and_exit_1(cli, small_trace, placement_files, monkeypatch, tmp_path):
    import placer.replay.reference as ref

    monkeypatch.setitem(ref.TOLERANCE, "float32", 0.0)
    out = tmp_path / "r.json"
    res = cli("replay", small_trace, placement_files[0], "--backend", "virtual", "--hidden", 16, "--ffn", 16,
              "--tokens-per-step", 600, "--steps", 1, "--threads", 1, "--out", out)
    assert_one_line_error(res, 1, "placement plain:", "tokens differ from the single-process reference")
    assert json.loads(out.read_text())["correct"] is False  # the report says what was measured


@pytest.mark.parametrize("extra, fragments", [
    (["-G", 2], ("plain.json: placement is for 4 GPUs, --world-size is 2",)),
    (["--layers", 9], ("--layers 9: the trace", "has 4 MoE layers")),
    (["--mode", "fast"], ("--mode 'fast' is not one of ep, coherent",)),
    (["--backend", "mpi"], ("--backend 'mpi' is not one of gloo, nccl, virtual",)),
    (["--dtype", "int8"], ("dtype 'int8' is not one of",)),
    (["--steps", 0], ("steps must be a positive integer, got 0",)),
    (["--nodes", 3], ("--nodes 3: world size 4 must divide evenly into nodes",)),
    (["--fail-rank", 7], ("fail-rank (7) must be a rank in [0, 4)",)),
])
def test_bad_options_are_refused_before_any_rank_starts(cli, small_trace, placement_files, no_launch, extra, fragments):
    res = cli("replay", small_trace, placement_files[0], *extra)
    assert_one_line_error(res, 2, *fragments)


def test_placements_that_do_not_fit_are_refused(cli, small_trace, placement_files, no_launch, tmp_path):
    other = save_placement(Placement([[0, 1, 2, 3]] * 4, num_gpus=4, num_experts=4), tmp_path / "four.json")
    assert_one_line_error(cli("replay", small_trace, other), 2, "four.json: placement has 4 experts",
                          "t.parquet has 8")
    short = save_placement(Placement([list(range(8))] * 3, num_gpus=4, num_experts=8), tmp_path / "short.json")
    assert_one_line_error(cli("replay", small_trace, short), 2, "short.json: placement has 3 layers")
    two = save_placement(Placement([list(range(8))] * 4, num_gpus=2, num_experts=8), tmp_path / "two.json")
    assert_one_line_error(cli("replay", small_trace, placement_files[0], two), 2,
                          "two.json: placement is for 2 GPUs, plain for 4")
    assert_one_line_error(cli("replay", small_trace, tmp_path / "nope.json"), 2,
                          "nope.json: placement file not found (nor a solver name: auto, contiguous")
    assert_one_line_error(cli("replay", small_trace, "contiguous"), 2, "names a solver: give --world-size")
    assert_one_line_error(cli("replay", tmp_path / "missing.parquet", placement_files[0]), 2,
                          "missing.parquet: trace file not found")


def test_nccl_without_gpus_is_refused(cli, small_trace, placement_files, no_launch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line_error(cli("replay", small_trace, placement_files[0], "--backend", "nccl"), 2,
                          "--backend nccl needs CUDA GPUs and none is visible")


def test_solver_named_placement_is_solved_for_the_world_size(cli, small_trace, tmp_path):
    res = cli("replay", small_trace, "contiguous", "contiguous:4", "-G", 4, "--backend", "virtual", "--hidden", 16,
              "--ffn", 16, "--tokens-per-step", 600, "--steps", 1, "--threads", 1, "--json")
    assert res.code == 0, res.err
    plain, red = json.loads(res.out)["placements"]
    assert (plain["name"], red["name"]) == ("contiguous", "contiguous:4")
    assert plain["num_redundant"] == 0 and red["solver"] == "contiguous" and red["num_redundant"] == 4
    assert plain["check"]["correct"] and red["check"]["correct"]
    assert np.sum([r["tokens_computed"] for r in red["ranks"]]) == np.sum([r["tokens_computed"] for r in plain["ranks"]])
    assert_one_line_error(cli("replay", small_trace, "contiguous:x", "-G", 4), 2, "contiguous:x: placement file not found")
