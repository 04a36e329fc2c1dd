"""``moeplace bench validate``: does the cost model order placements as measurement does?

For each trace, one replay runs every placement (solver names, solved on that trace: in-sample) and reports,
beside each measured step time and speedup over the first placement, the cost model's prediction on the
same steps with the same topology (``placer.replay.predict``). The benchmark gathers them into one table,
the rank correlation (Spearman) of predicted and measured speedups per trace and over all traces, each
placement's errors, a PNG scatter of predicted against measured speedups and a JSON of everything.

The topology is ``--topology`` or, by default, a calibration made here first with the replay's layer shape,
dtype, device and threads (``moeplace calibrate``; with ``--backend gloo`` also the links between that many
gloo ranks), so the prediction uses this machine's expert curve. The
default traces are synthetic, with three skews of expert popularity (Zipf 0.6, 1.0, 1.4), so that the
placements differ in how they balance load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.table import Table

from placer.calibrate.run import CalibrateRequest, calibrate
from placer.cli.common import console, print_json
from placer.core.errors import InputError
from placer.core.fileio import atomic_path, output_folder, write_json_atomic, write_text_atomic
from placer.core.mode import TrafficMode
from placer.progress import progress_bar, warn

DEFAULT_PLACEMENTS = ("contiguous", "round_robin", "random", "greedy", "eplb", "eplb:G", "auto")
DEFAULT_ZIPF = (0.6, 1.0, 1.4)


def synthetic_traces(folder: Path, tokens: int, layers: int, experts: int, top_k: int, zipf=DEFAULT_ZIPF) -> list[Path]:
    """Synthetic traces of one shape and several skews (seeded), written into ``folder``."""
    from placer.core.trace.writer import TraceWriter  # lazy: loads pyarrow; kept out of --help
    from placer.synth import SynthConfig, generate  # lazy: loads numba, pyarrow; kept out of --help

    out = []
    for i, z in enumerate(zipf):
        path = folder / f"zipf{z:g}.parquet"
        meta, batches = generate(SynthConfig(layers=layers, experts=experts, top_k=top_k, tokens=tokens, seed=i,
                                             zipf=z, clusters=max(1, experts // 4), seq_len=64))
        with TraceWriter(path, meta) as w:
            for b in batches:
                w.write(b)
        out.append(path)
    return out


def slot_tokens(traces: list[Path], tokens_per_step: int) -> int:
    """The largest token count per expert worth calibrating for a replay of these traces: a power of two at
    least 4x the mean tokens an expert gets in a step (tokens_per_step x top-k / experts), and at least 64."""
    from placer.core.trace.reader import TraceReader  # lazy: loads pyarrow; kept out of --help

    mean = max(tokens_per_step * m.top_k / m.num_experts for m in (TraceReader(t).meta for t in traces))
    return max(64, 1 << int(np.ceil(np.log2(4 * mean))))


def expand(names: list[str], gpus: int) -> list[str]:
    """``NAME:G`` stands for NAME with as many redundant slots as GPUs (one more expert copy per GPU)."""
    return [n.replace(":G", f":{gpus}") if n.endswith(":G") else n for n in names]


def solve_distinct(trace: Path, names: list[str], gpus: int, nodes: int, topology: Path | str, time_limit: float,
                   folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Solve each named placement on ``trace`` (in-sample, for ``topology``) and save it; a placement whose
    layout equals an earlier one's is dropped (two copies of one layout can only be ordered by noise).
    Returns the files in order and, for each dropped name, the name it duplicates."""
    from placer.core.placement_io import save_placement  # lazy: loads jsonschema; kept out of --help
    from placer.replay.run import solve_on_trace  # lazy: loads torch, the solvers, jsonschema; kept out of --help

    kept: list[tuple[str, object]] = []
    dropped: dict[str, str] = {}
    for name in names:
        solver, _, r = name.partition(":")
        if r and not r.isdigit():
            raise InputError(f"--placement {name!r}: expected NAME, NAME:R or NAME:G")
        p = solve_on_trace(solver, trace, gpus, nodes, int(r or 0), TrafficMode.EP, topology, time_limit)
        same = next((k for k, q in kept if q == p), None)
        if same is not None:
            dropped[name] = same
        else:
            kept.append((name, p))
    folder.mkdir(parents=True, exist_ok=True)
    return [save_placement(p, folder / f"{name.replace(':', '-r')}.json") for name, p in kept], dropped


def rows_of(report: dict, trace: str) -> list[dict]:
    """One row per placement of a replay report: measured and predicted step time and speedup, and errors."""
    return [{"trace": trace, "placement": c["name"], "correct": c["check"].get("correct", True),
             "measured_step_ms": c["step_ms_median"], "predicted_step_ms": c["predicted_step_ms"],
             "step_error": c["step_error"], "measured_speedup": c["speedup_vs_first"],
             "predicted_speedup": c["predicted_speedup_vs_first"], "speedup_error": c["speedup_error"],
             "compute_straggler_ms_per_layer": c["compute_straggler_ms_per_layer"],
             "predicted_compute_ms_per_layer": c["predicted_compute_ms_per_layer"]}
            for c in report["placements"]]


def summarize(rows: list[dict], per_trace: dict[str, float | None]) -> dict:
    """Pooled figures over every (trace, placement) but each trace's first (its speedup is 1 by definition)."""
    from placer.replay.predict import rank_correlation  # lazy: loads torch, numba, pyarrow; kept out of --help

    firsts = {}
    for r in rows:
        firsts.setdefault(r["trace"], r["placement"])
    rest = [r for r in rows if r["placement"] != firsts[r["trace"]]]
    rho = rank_correlation([r["predicted_speedup"] for r in rest], [r["measured_speedup"] for r in rest]) if rest else None
    abs_step = [abs(r["step_error"]) for r in rows if r["step_error"] is not None]
    abs_speed = [abs(r["speedup_error"]) for r in rest if r["speedup_error"] is not None]
    vals = [v for v in per_trace.values() if v is not None]
    return {
        "rank_correlation_pooled": None if rho is None else round(rho, 4),
        "rank_correlation_per_trace": per_trace,
        "rank_correlation_min": min(vals) if vals else None,
        "median_abs_step_error": round(float(np.median(abs_step)), 4) if abs_step else None,
        "max_abs_step_error": round(max(abs_step), 4) if abs_step else None,
        "median_abs_speedup_error": round(float(np.median(abs_speed)), 4) if abs_speed else None,
        "max_abs_speedup_error": round(max(abs_speed), 4) if abs_speed else None,
    }


def scatter_png(rows: list[dict], summary: dict, path: Path, title: str) -> None:
    """Predicted against measured speedups, one marker per trace, with the diagonal; written atomically."""
    import matplotlib  # lazy: matplotlib is slow to import; only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib is slow to import; only the plots need it

    fig, ax = plt.subplots(figsize=(6, 5))
    markers = "osD^v<>p*h"
    for i, trace in enumerate(dict.fromkeys(r["trace"] for r in rows)):
        pts = [(r["predicted_speedup"], r["measured_speedup"]) for r in rows if r["trace"] == trace]
        rho = summary["rank_correlation_per_trace"].get(trace)
        ax.scatter(*zip(*pts), marker=markers[i % len(markers)],
                   label=f"{trace} (rho {rho:.2f})" if rho is not None else trace)
    lo = min(min(r["predicted_speedup"], r["measured_speedup"]) for r in rows)
    hi = max(max(r["predicted_speedup"], r["measured_speedup"]) for r in rows)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="predicted = measured")
    ax.set_xlabel("predicted speedup over the first placement (cost model)")
    ax.set_ylabel("measured speedup (replay)")
    pooled = summary["rank_correlation_pooled"]
    ax.set_title(title + (f"\npooled rank correlation {pooled:.2f}" if pooled is not None else ""), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| trace | placement | correct | measured step ms | predicted step ms | step error | measured speedup "
             "| predicted speedup | speedup error |", "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "-" if v is None else f"{100 * v:+.1f} %"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['trace']} | {r['placement']} | {'yes' if r['correct'] else 'NO'} | "
                     f"{r['measured_step_ms']:.3g} | {r['predicted_step_ms']:.3g} | {pct(r['step_error'])} | "
                     f"{r['measured_speedup']:.3f}x | {r['predicted_speedup']:.3f}x | {pct(r['speedup_error'])} |")
    return "\n".join(lines)


def bench_validate(
    traces: Optional[List[Path]] = typer.Option(
        None, "--trace", "-t", help="Trace to replay (repeat for several; default: three synthetic traces of "
        "Zipf skew 0.6, 1.0 and 1.4 made here)."),
    placements: Optional[List[str]] = typer.Option(
        None, "--placement", "-p", help="Solver name, NAME:R (R redundant slots) or NAME:G (one per GPU), solved "
        f"on each trace; repeat (default: {' '.join(DEFAULT_PLACEMENTS)}). The first is the baseline."),
    backend: str = typer.Option("virtual", "--backend", "-b", help="virtual (one process) or gloo (CPU processes)."),
    gpus: int = typer.Option(4, "--gpus", "-G", help="EP ranks."),
    nodes: int = typer.Option(1, "--nodes", help="Nodes the ranks are split into."),
    hidden: int = typer.Option(256, "--hidden", help="Hidden size of the replayed layers."),
    ffn: int = typer.Option(512, "--ffn", help="Expert FFN size of the replayed layers."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16, float16 or float64."),
    layers: int = typer.Option(4, "--layers", help="MoE layers of the synthetic traces."),
    experts: int = typer.Option(16, "--experts", help="Experts of the synthetic traces."),
    top_k: int = typer.Option(2, "--top-k", help="Top-k of the synthetic traces."),
    tokens_per_step: int = typer.Option(1024, "--tokens-per-step", help="Tokens per replay step."),
    steps: int = typer.Option(5, "--steps", help="Measured steps per placement (medians over them)."),
    warmup: int = typer.Option(1, "--warmup", help="Unmeasured steps first."),
    weight_bank: int = typer.Option(0, "--weight-bank", help="Random experts share N weight sets (bounded memory "
                                    "for large shapes; see moeplace replay --help)."),
    threads: int = typer.Option(1, "--threads", help="CPU threads (1: compute timed in CPU time on a CPU)."),
    device: str = typer.Option("auto", "--device", help="virtual backend: cuda, cpu or auto."),
    topology: Optional[Path] = typer.Option(
        None, "--topology", help="Hardware file or preset for the predictions (default: calibrate here first with "
        "the replay's shape, dtype, device and threads)."),
    calibrate_budget: float = typer.Option(20.0, "--calibrate-budget", help="Seconds of timed expert rounds when calibrating."),
    time_limit: float = typer.Option(10.0, "--time-limit", help="Seconds each optimising solver may run."),
    out_dir: Path = typer.Option(Path("validate-out"), "--out-dir", "-o", help="Folder for validate.json, "
                                 "validate.md, scatter.png (and the traces and calibration made here)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON result instead of the table."),
) -> None:
    """Replay several placements over several traces; report the rank correlation between the cost model's
    predicted speedups and the measured ones, each placement's errors, and a PNG scatter."""
    from placer.replay.run import ReplayRequest, prepare, run  # lazy: loads torch, the solvers, jsonschema; kept out of --help

    t0 = time.perf_counter()
    if backend not in ("virtual", "gloo"):
        raise InputError(f"--backend {backend!r}: bench validate runs virtual or gloo (nccl: use replay itself)")
    names = expand(list(placements or DEFAULT_PLACEMENTS), gpus)
    if len(names) < 2:
        raise InputError(f"give at least two placements to compare, got {len(names)}")
    output_folder(out_dir)
    if not traces:
        traces = synthetic_traces(out_dir, steps * tokens_per_step, layers, experts, top_k)
    if topology is None:
        with progress_bar(None, "bench validate: calibrate", unit="round") as adv:
            # gloo: the links between the ranks too, since that backend measures its communication.
            doc = calibrate(CalibrateRequest(hidden=hidden, ffn=ffn, dtype=dtype, device=device, threads=threads,
                                             budget_s=calibrate_budget, max_tokens=slot_tokens(traces, tokens_per_step),
                                             backend="gloo" if backend == "gloo" else None,
                                             world_size=gpus if backend == "gloo" else None), progress=adv)
        topology = write_json_atomic(out_dir / "calibrated.json", doc)
    rows, per_trace, reports, duplicates = [], {}, {}, {}
    for trace in traces:
        name = Path(trace).stem
        files, duplicates[name] = solve_distinct(Path(trace), names, gpus, nodes, topology, time_limit,
                                                 out_dir / "placements" / name)
        cfg = prepare(ReplayRequest(
            trace=trace, placements=[str(f) for f in files], backend=backend, world_size=gpus, nodes=nodes,
            hidden=hidden, ffn=ffn, dtype=dtype, tokens_per_step=tokens_per_step, steps=steps, warmup=warmup,
            check="first", topology=topology, threads=threads, device=device, weight_bank=weight_bank))
        if cfg.extra.get("topology_warning") and not reports:
            warn(cfg.extra["topology_warning"])
        report = run(cfg, backend)
        reports[name] = report
        rows += rows_of(report, name)
        per_trace[name] = report["prediction"]["rank_correlation"]
    summary = summarize(rows, per_trace)
    result = {"backend": backend, "gpus": gpus, "nodes": nodes, "hidden": hidden, "ffn": ffn, "dtype": dtype,
              "tokens_per_step": tokens_per_step, "steps": steps, "threads": threads, "topology": str(topology),
              "device": next(iter(reports.values()))["device"], "timer": next(iter(reports.values()))["timer"],
              "placements": names, "duplicates_dropped": duplicates, "traces": [str(t) for t in traces],
              "summary": summary, "rows": rows,
              "wall_time_s": round(time.perf_counter() - t0, 1)}
    write_json_atomic(out_dir / "validate.json", result)
    write_text_atomic(out_dir / "validate.md", markdown_table(rows) + "\n")
    title = f"bench validate: {backend} ({result['device']}), {gpus} ranks, {hidden} x {ffn} {dtype}"
    scatter_png(rows, summary, out_dir / "scatter.png", title)
    if as_json:
        print_json(result)
        return
    _print(result, out_dir)


def _print(result: dict, out_dir: Path) -> None:
    s = result["summary"]
    t = Table(title=f"bench validate: {result['backend']} on {result['device']} ({result['timer']}), "
                    f"{result['gpus']} ranks, {result['hidden']} x {result['ffn']} {result['dtype']}; topology "
                    f"{result['topology']}", title_justify="left",
              caption="speedups over each trace's first placement, measured in one replay (steps interleaved) "
                      "and predicted by the cost model on the same steps; errors: predicted / measured - 1",
              caption_justify="left")
    for col in ("trace", "placement", "measured ms", "predicted ms", "step error", "measured speedup",
                "predicted speedup", "speedup error"):
        t.add_column(col, justify="left" if col in ("trace", "placement") else "right")
    pct = lambda v: "-" if v is None else f"{100 * v:+.1f} %"  # noqa: E731
    for r in result["rows"]:
        t.add_row(r["trace"], r["placement"] + ("" if r["correct"] else " (WRONG)"), f"{r['measured_step_ms']:.3g}",
                  f"{r['predicted_step_ms']:.3g}", pct(r["step_error"]), f"{r['measured_speedup']:.3f}x",
                  f"{r['predicted_speedup']:.3f}x", pct(r["speedup_error"]))
    con = console(min_width=130)
    con.print(t)
    per = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in s["rank_correlation_per_trace"].items())
    pooled = s["rank_correlation_pooled"]
    con.print(f"rank correlation of predicted and measured speedups: per trace {per}; pooled "
              f"{'-' if pooled is None else f'{pooled:.2f}'}")
    # The summary's errors are absolute values (unsigned); the rows' are signed (predicted low is negative).
    apct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    con.print(f"absolute step-time error: median {apct(s['median_abs_step_error'])}, largest "
              f"{apct(s['max_abs_step_error'])}; absolute speedup error: median {apct(s['median_abs_speedup_error'])}, "
              f"largest {apct(s['max_abs_speedup_error'])}")
    con.print(f"wrote {out_dir / 'validate.json'}, {out_dir / 'validate.md'}, {out_dir / 'scatter.png'} "
              f"({result['wall_time_s']:.0f} s)")


def register(bench_app: typer.Typer) -> None:
    bench_app.command("validate")(bench_validate)
