"""GPU paths: NCCL with one rank (the multi-GPU path runs the same code as gloo) and the virtual backend on a
GPU, timed with CUDA events. Skipped without CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from placer.core.placement import Placement
from placer.core.placement_io import save_placement
from tests.replay.conftest import write_trace

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def one_gpu_case(tmp_path):
    trace = write_trace(tmp_path / "t.parquet", tokens=512, layers=2, experts=4, drop_rate=0.0)
    p = save_placement(Placement([[0, 1, 2, 3]] * 2, num_gpus=1, num_experts=4), tmp_path / "p1.json")
    return trace, p


@pytest.mark.multiprocess
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nccl_world_size_one(cli, one_gpu_case, dtype):
    trace, p = one_gpu_case
    res = cli("replay", trace, p, "--backend", "nccl", "-G", 1, "--hidden", 256, "--ffn", 512, "--dtype", dtype,
              "--tokens-per-step", 256, "--steps", 2, "--json")
    assert res.code == 0, res.err
    rep = json.loads(res.out)
    assert rep["timer"] == "cuda-events" and rep["placements"][0]["check"]["correct"]
    assert rep["placements"][0]["bytes_sent"] == 0  # one rank sends nothing


def test_virtual_on_gpu_times_each_rank_with_cuda_events(cli, tmp_path):
    trace = write_trace(tmp_path / "t.parquet", tokens=1024, layers=2, experts=8, drop_rate=0.0)
    p = save_placement(Placement([list(range(8))] * 2, num_gpus=4, num_experts=8), tmp_path / "p4.json")
    res = cli("replay", trace, p, "--backend", "virtual", "--device", "cuda", "--hidden", 512, "--ffn", 256,
              "--dtype", "bfloat16", "--tokens-per-step", 512, "--steps", 2, "--json")
    assert res.code == 0, res.err
    rep = json.loads(res.out)
    assert rep["timer"] == "cuda-events" and rep["device"].startswith("cuda")
    c = rep["placements"][0]
    assert c["check"]["correct"] and c["compute_straggler_ms_per_layer"] > 0
