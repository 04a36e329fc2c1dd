"""``make gpu-check DRY=1``: the GPU check's every step, on the CPU with small shapes, so that the script cannot rot
(docs/calibrate.md). Its figures are not GPU figures and its Markdown block says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    block = (tmp_path / "gpu-check.md").read_text()
    assert block.strip() in res.stdout  # printed, ready for BENCHMARKS.md
    assert block.startswith("### GPU check: DRY RUN on the CPU") and "not GPU figures" in block.splitlines()[0]
    figures = json.loads((tmp_path / "gpu-check.json").read_text())
    steps = {s["step"]: s["status"] for s in figures["steps"]}
    assert set(steps) >= {"gpu_tests", "bench_trace", "calibrate_dsv3", "calibrate_bundled", "replay_dsv3",
                          "replay_bundled", "bench_validate"} and set(steps.values()) == {"ok"}, steps
    for part in ("**GPU-marked tests**", "**Tracer overhead**", "**Calibrate, DeepSeek-V3 expert**",
                 "**Replay, virtual backend, DeepSeek-V3 layer shape**", "**Replay, virtual backend, bundled model**",
                 "**Predicted against measured**", "| placement | correct | median step ms |"):
        assert part in block, part
    assert figures["replay_bundled"]["correct"] and len(figures["replay_bundled"]["placements"]) == 3


def test_gpu_check_refuses_a_machine_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", "/nonexistent/never"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "no CUDA GPU is visible" in res.stderr and "DRY=1" in res.stderr
