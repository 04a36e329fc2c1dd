"""``moeplace demo``: the main job on the bundled default, end to end, in a few minutes on 2 cores.

Each capability adds a step; steps share a ``DemoContext`` (the output folder, the files made so far).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console


@dataclass
class DemoContext:
    out: Path
    console: Console
    files: dict[str, Path] = field(default_factory=dict)


def step_trace(ctx: DemoContext) -> None:
    """A synthetic trace with planted clusters (the bundled model's traces replace it once traced)."""
    from placer.trace.synth import SynthConfig, generate
    from placer.trace.writer import TraceWriter

    cfg = SynthConfig(layers=8, experts=16, top_k=2, tokens=20000, seed=0, clusters=4, domains=2)
    meta, batches = generate(cfg)
    path = ctx.out / "synthetic.parquet"
    with TraceWriter(path, meta, with_domain=True) as w:
        for b in batches:
            w.write(b)
    ctx.files["trace"] = path
    ctx.console.print(f"wrote {path}: {cfg.tokens:,} tokens, {cfg.layers} layers x {cfg.experts} experts, top-{cfg.top_k}")


def step_info(ctx: DemoContext) -> None:
    """The trace's summary, as `moeplace info` prints it."""
    from placer.cli.info import info

    info(ctx.files["trace"], as_json=False)


def _replay_placements(ctx: DemoContext) -> tuple[Path, Path]:
    """contiguous and the best placement at hand for 2-4 GPUs: an earlier step's placement if it fits, else the
    first registered of the preferred solvers solved on the training trace, else contiguous with G redundant
    slots (so the replay still compares two layouts)."""
    from placer.placement_io import load_placement, save_placement
    from placer.replay.run import solve_on_trace
    from placer.trace.reader import TraceReader
    from solvers.registry import SOLVER_NAMES

    train = ctx.files.get("train", ctx.files["trace"])
    meta = TraceReader(train).meta
    best_path, gpus, mode = ctx.files.get("placement"), 4, "ep"
    if best_path is not None:
        p = load_placement(best_path)
        if 2 <= p.num_gpus <= 4 and (p.num_layers, p.num_experts) == (meta.num_layers, meta.num_experts):
            gpus, mode = p.num_gpus, p.mode
        else:
            best_path = None
    if best_path is None:
        name = next((n for n in ("auto", "eplb", "greedy") if n in SOLVER_NAMES), None)
        if name is not None:
            best = solve_on_trace(name, train, gpus, 1, 0, mode)
            best_path = save_placement(best, ctx.out / f"{name}.json")
        else:
            best = solve_on_trace("contiguous", train, gpus, 1, gpus, mode)
            best_path = save_placement(best, ctx.out / "contiguous-redundant.json")
            ctx.console.print("no load-aware solver is registered yet: comparing with contiguous + redundant slots")
    base_path = save_placement(solve_on_trace("contiguous", train, gpus, 1, 0, mode), ctx.out / "contiguous.json")
    return base_path, Path(best_path)


def step_replay(ctx: DemoContext) -> None:
    """A gloo replay (CPU ranks) of the held-out trace: correctness of every token and the measured ratio."""
    from placer.fileio import write_json_atomic
    from placer.replay.report import report_table
    from placer.replay.run import ReplayRequest, prepare, run, verdict

    trace = ctx.files.get("heldout", ctx.files["trace"])
    base, best = _replay_placements(ctx)
    cfg = prepare(ReplayRequest(trace=trace, placements=[str(base), str(best)], backend="gloo", hidden=64, ffn=128,
                                tokens_per_step=1024, steps=4, warmup=1, threads=1, timeout_s=120))
    report = run(cfg, "gloo")
    ctx.files["replay"] = write_json_atomic(ctx.out / "replay.json", report)
    ctx.console.print(report_table(report))
    first, other = report["placements"]
    for c in report["placements"]:
        chk = c["check"]
        ctx.console.print(f"{c['name']}: {chk['tokens_checked']:,} tokens checked against the single-process "
                          f"reference, {chk['mismatched_tokens']} differ (max relative error {chk['max_rel_error']:.1e})")
    ctx.console.print(f"{other['name']} vs {first['name']}: {other['speedup_vs_first']:.2f}x (median step time, "
                      f"{cfg.world_size} gloo ranks on this CPU, measured in this run; compute straggler "
                      f"{other['compute_straggler_speedup_vs_first']:.2f}x)")
    verdict(report)


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("trace", step_trace),
    ("info", step_info),
    ("replay", step_replay),
]


def run_demo(out: Path, console: Console) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=out, console=console)
    t0 = time.perf_counter()
    for name, fn in STEPS:
        console.rule(f"[bold]{name}[/bold]: {(fn.__doc__ or '').strip().splitlines()[0]}")
        fn(ctx)
    console.rule(f"demo done in {time.perf_counter() - t0:.1f} s; files in {out}")
    return ctx.files
