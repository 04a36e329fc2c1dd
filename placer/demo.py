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


def step_stats(ctx: DemoContext) -> None:
    """Routing statistics of the trace: summary, stats file, routing graph and heatmaps."""
    from placer.cli.stats import report
    from placer.stats import stats_from_traces

    stats = stats_from_traces(ctx.files["trace"], by="phase")
    ctx.files["stats"] = ctx.out / "stats.npz"
    ctx.files["graph"] = ctx.out / "routing.graphml"
    ctx.files["plots"] = ctx.out / "plots"
    report(stats, out=ctx.files["stats"], graph=[ctx.files["graph"]], plots=ctx.files["plots"])


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("trace", step_trace),
    ("info", step_info),
    ("stats", step_stats),
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
