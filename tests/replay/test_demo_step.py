"""The demo's replay step picks its placements without starting processes (the replay itself is covered by
the multi-process tests)."""

from __future__ import annotations

import io

from rich.console import Console

from placer.demo import DemoContext, _replay_placements
from placer.core.placement import Placement, SolveReport
from placer.core.placement_io import load_placement, save_placement
from tests.replay.conftest import write_trace


def test_replay_step_uses_an_earlier_placement_that_fits(tmp_path):
    trace = write_trace(tmp_path / "t.parquet", tokens=300, layers=2, experts=4, drop_rate=0.0)
    mine = save_placement(Placement([[3, 2, 1, 0]] * 2, num_gpus=2, num_experts=4, report=SolveReport(mode="coherent")), tmp_path / "p.json")
    ctx = DemoContext(out=tmp_path, console=Console(file=io.StringIO()), files={"trace": trace, "placement": mine})
    base, best = _replay_placements(ctx)
    assert best == mine
    b = load_placement(base)
    assert b.report.solver == "contiguous" and b.num_gpus == 2 and b.report.mode == "coherent"


def test_replay_step_solves_when_no_placement_fits(tmp_path):
    trace = write_trace(tmp_path / "t.parquet", tokens=300, layers=2, experts=8, drop_rate=0.0)
    far = save_placement(Placement([list(range(8))] * 2, num_gpus=8, num_experts=8), tmp_path / "p8.json")
    ctx = DemoContext(out=tmp_path, console=Console(file=io.StringIO()), files={"trace": trace, "placement": far})
    base, best = _replay_placements(ctx)
    b, o = load_placement(base), load_placement(best)
    assert b.num_gpus == o.num_gpus == 4 and b.num_redundant == 0
    assert b != o  # a second, different layout (a registered solver's, or redundant contiguous)
