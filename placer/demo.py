"""``moeplace demo``: the main job on the bundled default, end to end, in a few minutes on 2 cores.

Each capability adds a step; steps share a ``DemoContext`` (the output folder, the files made so far).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from placer.cli.info import info
from placer.cli.main import run as run_command
from placer.cli.stats import report
from placer.core.errors import MoeplaceError
from placer.core.fileio import output_folder, write_json_atomic
from placer.core.mode import TrafficMode
from placer.core.placement_io import load_placement, save_placement
from placer.core.stats.core import compute_stats
from placer.core.topology import preset
from placer.core.trace.reader import TraceReader
from placer.core.trace.writer import TraceWriter
from placer.export import PLACEMENT_FORMATS, export_placement, get_format, import_placement
from placer.inputs import stats_from_traces
from placer.replay.report import report_table
from placer.replay.run import ReplayRequest, prepare, solve_on_trace, verdict
from placer.replay.run import run as run_replay
from placer.tiny import BUNDLED_MODEL_DIR, REPO_TRACES_DIR
from placer.tracer.record import TraceOptions
from placer.tracer.run import trace_model
from solvers.problem import PlacementProblem
from solvers.registry import SOLVER_NAMES, get_solver

# The command line (placer.cli.main, info, stats) is imported where a step runs a command: importing it here would
# make placer.cli load this module's own command module first.


@dataclass
class DemoContext:
    out: Path
    console: Console
    files: dict[str, Path] = field(default_factory=dict)


def step_trace(ctx: DemoContext) -> None:
    """Trace the bundled tiny MoE model on held-out text (prefill and greedy decode), as `moeplace trace` does."""
    text = REPO_TRACES_DIR / "text" / "heldout.txt"
    if not text.is_file():
        raise MoeplaceError(f"{text}: the demo runs from a clone of the repository (traces/ is missing)")
    path = ctx.out / "trace.parquet"
    opts = TraceOptions(batch_size=4, seq_len=128, max_tokens=512, generate=16)
    res = trace_model(BUNDLED_MODEL_DIR, [text], path, opts)
    ctx.files["trace"] = path
    # The bundled traces (a few thousand tokens each, recorded by `make traces`) for the later steps.
    ctx.files["train"] = REPO_TRACES_DIR / "train.parquet"
    ctx.files["heldout"] = REPO_TRACES_DIR / "heldout.parquet"
    m = res.meta
    ctx.console.print(
        f"wrote {path}: {res.prefill_tokens:,} prefill + {res.decode_tokens:,} decode tokens of {text.name}, "
        f"{m.num_layers} MoE layers x {m.num_experts} experts, top-{m.top_k} ({m.model_name}, "
        f"{res.wall_time_s:.1f} s); bundled traces: {ctx.files['train']}, {ctx.files['heldout']}"
    )


def step_info(ctx: DemoContext) -> None:
    """The trace's summary, as `moeplace info` prints it."""
    info(ctx.files["trace"], as_json=False)


def step_stats(ctx: DemoContext) -> None:
    """Routing statistics of the trace: summary, stats file, routing graph and heatmaps."""
    stats = stats_from_traces(ctx.files["trace"], by="phase")
    ctx.files["stats"] = ctx.out / "stats.npz"
    ctx.files["graph"] = ctx.out / "routing.graphml"
    ctx.files["plots"] = ctx.out / "plots"
    report(stats, out=ctx.files["stats"], graph=[ctx.files["graph"]], plots=ctx.files["plots"])
DEMO_GPUS = 4
# Baselines the demo solves, with their extra options (eplb gets one redundant slot per GPU).
DEMO_BASELINES = (("greedy", ()), ("eplb", ("--redundant", str(DEMO_GPUS))), ("round_robin", ()), ("random", ()))


def _moeplace(*args: object, capture: bool = False) -> str:
    """Run a moeplace command in this process (its standard output returned if ``capture``); a failure
    stops the demo with its message."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf) if capture else contextlib.nullcontext():
        code = run_command(["-q", *map(str, args)])
    if code != 0:
        raise MoeplaceError(f"demo: `moeplace {' '.join(map(str, args))}` failed with exit code {code}")
    return buf.getvalue()


def step_solve(ctx: DemoContext) -> None:
    """Baseline placements (greedy, eplb, round_robin, random) on 4 GPUs, solved on the bundled train trace."""

    trace = ctx.files.get("train", ctx.files["trace"])
    table = Table(title=f"moeplace solve {trace} --gpus {DEMO_GPUS} --solver NAME ... --out "
                        f"{ctx.out / 'placements'}/NAME.json", title_justify="left")
    for col in ("solver", "options", "status", "wall s", "max/mean load"):
        table.add_column(col, no_wrap=True)
    for name, extra in DEMO_BASELINES:
        out = ctx.out / "placements" / f"{name}.json"
        s = json.loads(_moeplace("solve", trace, "--solver", name, "--gpus", DEMO_GPUS, *extra, "--out", out,
                                 "--json", capture=True))
        table.add_row(name, " ".join(extra), s["status"], f"{s['wall_time_s']:.3f}", f"{s['max_over_mean_load']:.3f}")
        ctx.files[f"placement-{name}"] = out
    # The placement later steps use (export, replay) until an optimising solver's step replaces it.
    ctx.files["placement"] = ctx.files["placement-greedy"]
    ctx.console.print(table)


def step_evaluate(ctx: DemoContext) -> None:
    """The baselines measured on the bundled held-out trace (another text than the train trace), both modes."""
    trace = ctx.files.get("heldout", ctx.files["trace"])
    placements = [ctx.files[f"placement-{name}"] for name, _ in DEMO_BASELINES]
    for mode in TrafficMode:
        _moeplace("evaluate", trace, *placements, "--mode", mode)
def _demo_placement(ctx: DemoContext):
    """The demo's latest placement, or (before any solver step ran) the contiguous baseline on the trace."""
    if ctx.files.get("placement"):
        return load_placement(ctx.files["placement"])

    reader = TraceReader(ctx.files["trace"])
    m = reader.meta
    stats = compute_stats(reader.iter_batches(fields=("experts", "present")), m.num_layers, m.num_experts, m.top_k)
    problem = PlacementProblem(load_LE=stats.load_LE, topology=preset(4), source=str(ctx.files["trace"]),
                               model_layer_indices=tuple(m.moe_layer_indices))
    path = save_placement(get_solver("contiguous")(problem), ctx.out / "placement-contiguous.json")
    ctx.files["placement"] = path
    return load_placement(path)


def step_export(ctx: DemoContext) -> None:
    """The placement in every serving stack's format, and what loads each file."""
    p = _demo_placement(ctx)
    ctx.console.print(f"placement {ctx.files['placement']}: {p.num_layers} MoE layers x {p.num_slots} slots on "
                      f"{p.num_gpus} GPUs ({p.report.solver})")
    for fmt in PLACEMENT_FORMATS:
        numbering = None if p.model_layer_indices is not None else "moe"
        r = export_placement(p, ctx.out / "export" / f"placement-{fmt}{get_format(fmt).suffixes[0]}", fmt, numbering)
        back = import_placement(r.path, fmt, r.numbering, moe_layers=list(p.model_layer_indices or ()) or None,
                                gpus=p.num_gpus)
        assert back == p, f"{fmt}: the exported file does not read back as the same placement"
        ctx.files[f"export-{fmt}"] = r.path
        ctx.console.print(f"[bold]{fmt}[/bold] {r.path} ({r.numbering} numbering, {len(r.layer_ids)} rows; "
                          f"reads back as the same placement)")
        ctx.console.print(f"    load it with: {r.loads_with}", soft_wrap=True, highlight=False)
def _replay_placements(ctx: DemoContext) -> tuple[Path, Path]:
    """contiguous and the best placement at hand for 2-4 GPUs: an earlier step's placement if it fits, else the
    first registered of the preferred solvers solved on the training trace, else contiguous with G redundant
    slots (so the replay still compares two layouts)."""
    train = ctx.files.get("train", ctx.files["trace"])
    meta = TraceReader(train).meta
    best_path, gpus, mode = ctx.files.get("placement"), 4, TrafficMode.EP
    if best_path is not None:
        p = load_placement(best_path)
        if 2 <= p.num_gpus <= 4 and (p.num_layers, p.num_experts) == (meta.num_layers, meta.num_experts):
            gpus, mode = p.num_gpus, p.report.mode
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
    trace = ctx.files.get("heldout", ctx.files["trace"])
    base, best = _replay_placements(ctx)
    cfg = prepare(ReplayRequest(trace=trace, placements=[str(base), str(best)], backend="gloo", hidden=64, ffn=128,
                                tokens_per_step=1024, steps=4, warmup=1, threads=1, timeout_s=120))
    report = run_replay(cfg, "gloo")
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


AUTO_TIME_LIMIT = 5  # seconds per mode: the whole demo stays within 3 minutes on 2 cores


def step_optimise(ctx: DemoContext) -> None:
    """auto (the default solver) on the trace, per traffic mode, measured on the held-out trace next to the
    baselines."""
    trace = ctx.files.get("train", ctx.files["trace"])
    heldout = ctx.files.get("heldout", ctx.files["trace"])
    baselines = [ctx.files[f"placement-{name}"] for name, _ in DEMO_BASELINES]
    for mode in TrafficMode:
        out = ctx.out / "placements" / f"auto-{mode}.json"
        s = json.loads(_moeplace("solve", trace, "--gpus", DEMO_GPUS, "--mode", mode, "--time-limit",
                                 AUTO_TIME_LIMIT, "--out", out, "--json", capture=True))
        ctx.files[f"placement-auto-{mode}"] = out
        ctx.console.print(f"moeplace solve {trace} --gpus {DEMO_GPUS} --mode {mode} --time-limit "
                          f"{AUTO_TIME_LIMIT} --out {out}: {s['status']} in {s['wall_time_s']:.1f} s, "
                          f"objective {s['objective']:,.1f}, bound {s['bound']:,.1f} (gap {s['gap']:.1%})",
                          soft_wrap=True, highlight=False)
        _moeplace("evaluate", heldout, out, *baselines, "--mode", mode)
        r = json.loads(_moeplace("evaluate", heldout, out, *baselines, "--mode", mode, "--json", capture=True))
        key = "remote_gpus_per_token" if mode is TrafficMode.EP else "pair_hops_per_token"
        auto = next(d["summary"] for d in r["placements"] if d["solver"] == "auto")
        best = min(d["summary"][key] for d in r["placements"] if d["solver"] != "auto")
        ctx.console.print(f"held-out {key}: auto {auto[key]:.3f} vs best baseline {best:.3f} "
                          f"({(auto[key] - best) / best:+.1%}); max/mean load {auto['mean_imbalance']:.3f}",
                          highlight=False)
    # Later steps (export, replay) use auto's ep placement.
    ctx.files["placement"] = ctx.files["placement-auto-ep"]


# The drift step's synthetic trace: 6 windows of traffic whose hot experts and domain mix change (synth --drift);
# sized to take under 30 seconds on 2 cores.
DRIFT = dict(layers=6, experts=32, top_k=2, windows=6, window=6000, drift=0.15, gpus=8, redundant=8)


def step_drift(ctx: DemoContext) -> None:
    """Traffic that drifts: eplb fitted once against robust auto on four windows, judged on the next two; then a
    rebalance to the new traffic with a small budget of moves."""
    d = DRIFT
    trace, out = ctx.out / "drift.parquet", ctx.out / "drift"
    _moeplace("synth", "--layers", d["layers"], "--experts", d["experts"], "--top-k", d["top_k"], "--tokens",
              d["windows"] * d["window"], "--domains", 3, "--drift", d["drift"], "--drift-periods", d["windows"],
              "--clusters", 4, "--seq-len", 100, "--seed", 1, "--out", trace)
    train, held = out / "train.parquet", out / "held.parquet"
    _split(trace, train, held, 4 * d["window"])
    common = ("--gpus", d["gpus"], "--nodes", 2, "--redundant", d["redundant"], "--time-limit", 5)
    robust, eplb = out / "robust.json", out / "eplb.json"
    _moeplace("solve", "--load", out / "train-load.npy", "--solver", "eplb", *common, "--out", eplb, capture=True)
    s = json.loads(_moeplace("solve", train, "--scenarios", f"window:{d['window']}", *common, "--out", robust,
                             "--json", capture=True))
    ctx.console.print(f"moeplace solve {train} --scenarios window:{d['window']} ... : robust auto on "
                      f"{len(s['scenarios']['scenarios'])} windows, worst in-sample max/mean "
                      f"{s['scenarios']['worst']['max_over_mean']:.3f}", highlight=False, soft_wrap=True)
    _moeplace("evaluate", held, robust, eplb, "--scenarios", f"window:{d['window']}")
    r = json.loads(_moeplace("rebalance", eplb, held, "--max-moves-per-layer", 2, "--solver", "eplb", "--out",
                             out / "rebalanced.json", "--json", capture=True))
    ctx.console.print(f"moeplace rebalance {eplb} {held} --max-moves-per-layer 2: {r['moves']['moves']} moves "
                      f"({r['moves']['share_of_copies']:.1%} of the copies; a full eplb re-solve would move "
                      f"{r['target']['moves']}), objective {r['current_objective']:,.0f} -> {r['objective']:,.0f} "
                      f"(full re-solve {r['target']['objective']:,.0f})", highlight=False, soft_wrap=True)


def _split(trace: Path, first: Path, rest: Path, tokens: int) -> None:
    """Write the first ``tokens`` tokens of ``trace`` to ``first`` (and its expert load to ``first``-load.npy),
    the others to ``rest``."""

    r = TraceReader(trace)
    b = r.read_all()
    for path, rows in ((first, np.arange(tokens)), (rest, np.arange(tokens, len(b)))):
        with TraceWriter(path, r.meta, with_domain=True) as w:
            w.write(b.select(rows))
    part = b.select(np.arange(tokens))
    load = np.zeros((r.meta.num_layers, r.meta.num_experts), dtype=np.int64)
    for l in range(r.meta.num_layers):
        np.add.at(load[l], part.experts_TLK[:, l, :].astype(np.int64).ravel(), 1)
    np.save(first.parent / f"{first.stem}-load.npy", load)


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("trace", step_trace),
    ("info", step_info),
    ("stats", step_stats),
    ("solve", step_solve),
    ("evaluate", step_evaluate),
    ("optimise", step_optimise),
    ("drift", step_drift),
    ("export", step_export),
    ("replay", step_replay),
]


def run_demo(out: Path, console: Console) -> dict[str, Path]:
    output_folder(out)
    ctx = DemoContext(out=out, console=console)
    t0 = time.perf_counter()
    for name, fn in STEPS:
        console.rule(f"[bold]{name}[/bold]: {(fn.__doc__ or '').strip().splitlines()[0]}")
        fn(ctx)
    console.rule(f"demo done in {time.perf_counter() - t0:.1f} s; files in {out}")
    return ctx.files
