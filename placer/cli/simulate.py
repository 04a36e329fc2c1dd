"""``moeplace simulate``: replay time-ordered traffic window by window and compare re-placement policies."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.table import Table

from placer.cli._options import GPUS_HELP, NODES_HELP, TOPOLOGY_HELP
from placer.cli.common import UsageError, console, print_json
from placer.core.fileio import prepare_output, write_json_atomic
from placer.core.mode import TrafficMode
from placer.plots.timeline import plot_simulation
from placer.progress import progress_bar


def simulate(
    traces: Optional[List[Path]] = typer.Argument(None, help="A time-ordered trace (files or folders, in order)."),
    load_files: Optional[List[Path]] = typer.Option(
        None, "--load", help="Instead of a trace: load files, one window each, in order (balance only)."),
    window: Optional[int] = typer.Option(None, "--window", help="Tokens per window of a trace (the first window is "
                                                                 "observed only: every policy is fitted to it)."),
    policies: List[str] = typer.Option(
        ["static", "eplb"], "--policy", help="Repeatable: static (eplb fitted once), a solver re-solved every window "
                                             "(eplb, auto, greedy, ...), or rebalance:K (at most K moves per layer "
                                             "towards auto)."),
    history: str = typer.Option("last", "--history", help="What a policy re-places on: last (the previous window) "
                                                          "or all (every window so far)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", "-g", help=GPUS_HELP),
    nodes: Optional[int] = typer.Option(None, "--nodes", "-n", help=NODES_HELP),
    topology_file: Optional[Path] = typer.Option(None, "--topology", help=TOPOLOGY_HELP),
    redundant: int = typer.Option(0, "--redundant", "-r", help="Redundant slots per layer."),
    mode: TrafficMode = typer.Option(TrafficMode.EP, "--mode", help="Traffic model: ep or coherent."),
    time_limit: float = typer.Option(10.0, "--time-limit", help="Seconds for each solve of a policy."),
    seed: int = typer.Option(0, "--seed", help="Seed of the solvers."),
    expert_bytes: Optional[float] = typer.Option(
        None, "--expert-bytes", help="Bytes of one expert's weights: moves become bytes and transfer time."),
    tokens_per_step: Optional[int] = typer.Option(
        None, "--tokens-per-step", help="Steps of this many tokens for the time estimate (default: a window is one step)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write every figure (JSON) here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of imbalance and moves over the windows."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Replay time-ordered traffic window by window, as a serving stack's periodic EPLB does: before every window
    each policy may re-place using only what it has seen; then the window is served and measured (balance,
    traffic, estimated MoE time, moves and the time to transfer them). docs/robust.md.
    """
    # lazy: these load the solvers (numba, OR-Tools); kept out of `moeplace --help`
    from placer.inputs import load_matrix, resolve_topology
    from placer.simulate import Policy, Window, simulate as run

    parsed = [Policy.parse(p) for p in policies]
    if len({p.name for p in parsed}) != len(parsed):
        raise UsageError("--policy: a policy is named twice")
    if bool(traces) == bool(load_files):
        raise UsageError("give a time-ordered trace, or load files with --load (one window each)")
    if expert_bytes is not None and not expert_bytes > 0:
        raise UsageError(f"--expert-bytes must be positive, got {expert_bytes}")
    topo = resolve_topology(gpus, nodes, topology_file)
    for path in (out, plot):
        if path is not None:
            prepare_output(path)
    if traces:
        if window is None or window < 1:
            raise UsageError("--window N (tokens per window, N >= 1) is needed with a trace")
        windows = _trace_windows(traces, window)
    else:
        if window is not None:
            raise UsageError("--window applies to a trace; with --load every file is one window")
        windows = [Window(p.name, load_matrix(p)) for p in load_files]
    with progress_bar(len(parsed) * (len(windows) - 1), "simulate", unit="window") as advance:
        sim = run(windows, parsed, topo, redundant, mode, history, time_limit, seed, expert_bytes, tokens_per_step,
                  progress=advance)
    d = sim.to_dict()
    if out is not None:
        write_json_atomic(out, d)
    if plot is not None:
        plot_simulation(sim, plot)
    if as_json:
        print_json(d)
        return
    _print(sim, traces is None)


def _trace_windows(traces: list[Path], width: int):
    """The trace's windows of ``width`` tokens in order, with their statistics and tokens."""
    from placer.core.stats.core import compute_stats  # lazy: loads numba, pyarrow; kept out of --help
    from placer.core.trace.reader import TraceDataset  # lazy: loads pyarrow; kept out of --help
    from placer.inputs import MAX_PATH_ENTRIES  # lazy: loads the solvers; kept out of --help
    from placer.simulate import Window  # lazy: loads the solvers; kept out of --help

    ds = TraceDataset(list(traces))
    L, E, K = ds.meta.shape
    if ds.num_tokens * L * K > MAX_PATH_ENTRIES:
        raise UsageError(f"the trace holds {ds.num_tokens:,} tokens x {L} layers x top-{K}, more than simulate reads "
                         f"at once; cut it into files and give load files with --load")
    batch = ds.read_all(fields=("experts", "present", "seq"))
    out = []
    for start in range(0, len(batch), width):
        part = batch.select(np.arange(start, min(start + width, len(batch))))
        stats = compute_stats([part], L, E, K, moe_layer_indices=tuple(ds.meta.moe_layer_indices))
        out.append(Window(f"tokens {start}-{start + len(part) - 1}", stats, part))
    if len(out) < 2:
        raise UsageError(f"--window {width}: the trace's {len(batch):,} tokens make {len(out)} window; the "
                         f"simulation needs at least two (the first is observed only)")
    return out


def _print(sim, balance_only: bool) -> None:
    con = console(min_width=120)
    t = Table(title=f"simulation over {len(sim.windows)} windows (the first window observed only)",
              title_justify="left")
    traffic = None if balance_only or sim.traffic is None else sim.traffic.label
    cols = ["policy", "mean max/mean", "worst max/mean"] + ([traffic] if traffic else []) + ["moves", "GB moved"]
    if not balance_only:
        cols += ["MoE time ms", "transfer ms", "total ms"]
    for c in cols:
        t.add_column(c, justify="left" if c == "policy" else "right")

    def num(v, fmt):
        return "-" if v is None else fmt.format(v)

    for r in sim.totals():
        row = [r["policy"], f"{r['mean_max_over_mean']:.3f}", f"{r['worst_max_over_mean']:.3f}"]
        row += [num(r["traffic_per_token"], "{:.3f}")] if traffic else []
        row += [f"{r['moves']:,}", num(None if r["bytes_moved"] is None else r["bytes_moved"] / 1e9, "{:,.2f}")]
        if not balance_only:
            row += [num(r["time_ms"], "{:,.1f}"), num(r["transfer_ms"], "{:,.1f}"), num(r["total_ms"], "{:,.1f}")]
        t.add_row(*row)
    if traffic:
        t.caption = f"{traffic}: {_TRAFFIC_CAPTIONS.get(sim.traffic.key, sim.traffic.key)}, the windows' weighted by their tokens"
        t.caption_justify = "left"
    con.print(t)
    w = Table(title="per window: max/mean GPU load (moves in brackets)" + (f" and {traffic}" if traffic else ""),
              title_justify="left")
    w.add_column("window")
    for p in sim.policies:
        w.add_column(p, justify="right")
        if traffic:
            w.add_column(f"{p} {traffic}", justify="right")
    for name in sim.windows:
        cells = []
        for p in sim.policies:
            for r in sim.rows:
                if r.policy == p and r.window == name:
                    cells.append(f"{r.max_over_mean:.3f} ({r.moves})")
                    cells += [num(r.traffic_per_token, "{:.3f}")] if traffic else []
        w.add_row(name, *cells)
    con.print(w)


# What the headline traffic figure counts (``TRAFFIC_FIGURES``' first per traffic model).
_TRAFFIC_CAPTIONS = {"remote_gpus_per_token": "distinct remote GPUs a token is dispatched to per layer",
                     "messages_per_token": "messages per token between adjacent layers"}


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
