"""The demo's solve and evaluate steps run on the demo trace and print the comparison."""

from __future__ import annotations

from rich.console import Console

from placer.demo import DEMO_BASELINES, DemoContext, step_evaluate, step_solve, step_trace
from placer.core.placement_io import load_placement


def test_demo_solves_the_baselines_and_evaluates_them(tmp_path, capsys):
    ctx = DemoContext(out=tmp_path, console=Console(record=True, width=120))
    step_trace(ctx)
    step_solve(ctx)
    for name, _ in DEMO_BASELINES:
        assert load_placement(ctx.files[f"placement-{name}"]).report.solver == name
    assert ctx.files["placement"] == ctx.files["placement-greedy"]
    solved = ctx.console.export_text()
    assert "eplb" in solved and "--redundant 4" in solved
    capsys.readouterr()
    step_evaluate(ctx)
    out = capsys.readouterr().out
    assert "mode ep" in out and "mode coherent" in out and "contiguous*" in out
    assert all(name in out for name, _ in DEMO_BASELINES)


def test_demo_optimise_step_solves_auto_and_measures_the_gain(tmp_path, capsys, monkeypatch):
    import placer.demo as demo
    from placer.synth import SynthConfig, generate
    from placer.core.trace.writer import TraceWriter

    monkeypatch.setattr(demo, "AUTO_TIME_LIMIT", 1)
    ctx = DemoContext(out=tmp_path, console=Console(record=True, width=160))
    meta, batches = generate(SynthConfig(layers=4, experts=8, top_k=2, tokens=3000, clusters=4, seed=1))
    ctx.files["trace"] = tmp_path / "t.parquet"
    with TraceWriter(ctx.files["trace"], meta) as w:
        for b in batches:
            w.write(b)
    step_solve(ctx)
    capsys.readouterr()
    demo.step_optimise(ctx)
    out = capsys.readouterr().out
    text = ctx.console.export_text()
    assert "auto-ep" in out and "auto-coherent" in out
    assert "held-out remote_gpus_per_token: auto" in text and "held-out pair_hops_per_token: auto" in text
    assert load_placement(ctx.files["placement"]).report.solver == "auto"
    assert ("optimise", demo.step_optimise) in demo.STEPS


def test_demo_drift_step_compares_robust_auto_and_eplb_and_rebalances(tmp_path, capsys):
    from placer.demo import step_drift

    ctx = DemoContext(out=tmp_path, console=Console(record=True, width=160))
    step_drift(ctx)
    text = ctx.console.export_text()
    out = capsys.readouterr().out
    assert "robust auto on 4 windows" in text and "moves" in text and "full re-solve" in text
    assert "evaluate on 2 scenarios" in out and "robust (auto)" in out and "eplb" in out
    assert (tmp_path / "drift" / "rebalanced.json").is_file()
