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
    """Trace the bundled tiny MoE model on held-out text (prefill and greedy decode), as `moeplace trace` does."""
    from placer.errors import MoeplaceError
    from placer.tiny import BUNDLED_MODEL_DIR, REPO_TRACES_DIR
    from placer.tracer.record import TraceOptions
    from placer.tracer.run import trace_model

    text = REPO_TRACES_DIR / "text" / "heldout.txt"
    if not text.is_file():
        raise MoeplaceError(f"{text}: the demo runs from a clone of the repository (traces/ is missing)")
    path = ctx.out / "trace.parquet"
    opts = TraceOptions(batch_size=4, seq_len=128, max_tokens=512, generate=16)
    res = trace_model(BUNDLED_MODEL_DIR, [text], path, opts)
    ctx.files["trace"] = path
    # The bundled traces (a few thousand tokens each, recorded by `make traces`) for the later steps.
    ctx.files["train_trace"] = REPO_TRACES_DIR / "train.parquet"
    ctx.files["heldout_trace"] = REPO_TRACES_DIR / "heldout.parquet"
    m = res.meta
    ctx.console.print(
        f"wrote {path}: {res.prefill_tokens:,} prefill + {res.decode_tokens:,} decode tokens of {text.name}, "
        f"{m.num_layers} MoE layers x {m.num_experts} experts, top-{m.top_k} ({m.model_name}, "
        f"{res.wall_time_s:.1f} s); bundled traces: {ctx.files['train_trace']}, {ctx.files['heldout_trace']}"
    )


def step_info(ctx: DemoContext) -> None:
    """The trace's summary, as `moeplace info` prints it."""
    from placer.cli.info import info

    info(ctx.files["trace"], as_json=False)


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("trace", step_trace),
    ("info", step_info),
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
