"""The demo's solve and evaluate steps run on the demo trace and print the comparison."""

from __future__ import annotations

from rich.console import Console

from placer.demo import DEMO_BASELINES, DemoContext, step_evaluate, step_solve, step_trace
from placer.placement_io import load_placement


def test_demo_solves_the_baselines_and_evaluates_them(tmp_path, capsys):
    ctx = DemoContext(out=tmp_path, console=Console(record=True, width=120))
    step_trace(ctx)
    step_solve(ctx)
    for name, _ in DEMO_BASELINES:
        assert load_placement(ctx.files[f"placement-{name}"]).solver == name
    assert ctx.files["placement"] == ctx.files["placement-greedy"]
    solved = ctx.console.export_text()
    assert "eplb" in solved and "--redundant 4" in solved
    capsys.readouterr()
    step_evaluate(ctx)
    out = capsys.readouterr().out
    assert "mode ep" in out and "mode coherent" in out and "contiguous*" in out
    assert all(name in out for name, _ in DEMO_BASELINES)
