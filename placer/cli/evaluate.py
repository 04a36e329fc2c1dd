"""``moeplace evaluate``: what placements cost on a trace (load balance, traffic, estimated time)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.table import Table

from placer.cli._options import GPUS_HELP, NODES_HELP, SCENARIOS_HELP, TOPOLOGY_HELP
from placer.cli.common import UsageError, console, print_json
from placer.core.mode import TRAFFIC_FIGURES, TrafficMode
from placer.core.topology import preset
from placer.progress import progress_bar


def evaluate(
    paths: List[Path] = typer.Argument(
        ..., metavar="TRACE PLACEMENT...",
        help="A trace (file or folder), normally held out, then placement JSON files. With --load or --stats "
             "all are placements; with --scenarios inputs, every path not ending in .json is a trace (a scenario)."),
    mode: Optional[TrafficMode] = typer.Option(
        None, "--mode", help="Traffic model: ep (dispatch/combine) or coherent (ExFlow); default: the first "
                             "placement's mode."),
    gpus: Optional[int] = typer.Option(None, "--gpus", "-g", help=GPUS_HELP + " Default: the placements'."),
    nodes: Optional[int] = typer.Option(None, "--nodes", "-n", help=NODES_HELP),
    topology_file: Optional[Path] = typer.Option(
        None, "--topology", help=TOPOLOGY_HELP + " Default: the first placement's topology."),
    tokens_per_step: Optional[int] = typer.Option(
        None, "--tokens-per-step", help="Cut the trace into steps of this many tokens for the time estimate "
                                        "(default: the whole trace is one step)."),
    load_files: Optional[List[Path]] = typer.Option(
        None, "--load", help="Evaluate on expert loads instead of a trace: balance only (repeatable: summed, or "
                             "each one a scenario); the inputs of `moeplace stats --load`."),
    stats_files: Optional[List[Path]] = typer.Option(
        None, "--stats", help="Evaluate on a stats file's expert loads instead of a trace: balance only "
                              "(repeatable: summed, or each one a scenario)."),
    scenarios: Optional[str] = typer.Option(
        None, "--scenarios", help=SCENARIOS_HELP + " Prints one row per placement and scenario, then each "
                                  "placement's worst and mean over the scenarios."),
    moves_from: Optional[Path] = typer.Option(
        None, "--moves-from", help="A current placement: add the moves (expert copies loaded onto a GPU that did not "
                                   "hold them) each placement needs from it, GPUs matched to make them fewest."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also print a per-layer table for each placement."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (every per-layer figure) instead of tables."),
) -> None:
    """Measure placements on a trace: per-layer max/mean GPU load and the worst layer; in ep mode the remote
    GPUs and nodes a token is dispatched to, in coherent mode the messages and expert-pair hops between
    layers; bytes over NVLink and the network; an estimated MoE time per layer and the speedup over
    `contiguous` (always computed as the reference). Definitions: docs/cost-model.md.
    """
    # lazy: these load the solvers (numba, OR-Tools) and jsonschema; kept out of `moeplace --help`
    from placer.evaluate import Candidate, check_candidates, compare_on_load, compare_on_trace
    from placer.inputs import resolve_topology
    from placer.core.placement_io import load_placement

    if scenarios is not None:
        _evaluate_scenarios(paths, stats_files or [], load_files or [], scenarios, mode, gpus, nodes, topology_file,
                            tokens_per_step, moves_from, as_json)
        return
    balance_only = bool(load_files or stats_files)
    if balance_only:
        input_path, placement_paths = None, list(paths)
    else:
        if len(paths) < 2:
            raise UsageError("give a trace and at least one placement file (or --load FILE with placements)")
        input_path, placement_paths = paths[0], list(paths[1:])
    cands = [Candidate(_display_name(p, placement_paths), load_placement(p), str(p)) for p in placement_paths]
    if not cands:
        raise UsageError("give at least one placement file to evaluate")
    first = cands[0].placement
    mode_value = mode if mode is not None else first.report.mode
    moves = _moves(cands, moves_from)

    if balance_only:
        from placer.scenarios import read_scenarios

        stats = read_scenarios((), stats_files or [], load_files or [])[0].stats  # several: summed, as solve does
        source_name = " + ".join(str(p) for p in (stats_files or []) + (load_files or []))
        check_candidates(cands, stats.num_layers, stats.num_experts, source_name,
                         tuple(stats.moe_layer_indices) or None)
        results, ref_index, topo, tokens = compare_on_load(stats.load_LE, cands, mode_value), None, None, None
    else:
        from placer.core.trace.reader import TraceDataset  # lazy: loads pyarrow; kept out of --help

        ds = TraceDataset([input_path])
        meta = ds.meta
        source_name = str(input_path)
        check_candidates(cands, meta.num_layers, meta.num_experts, f"the trace {input_path}", meta.moe_layer_indices)
        topo = resolve_topology(gpus, nodes, topology_file, default=first.topology or preset(first.num_gpus, first.num_nodes))
        if (topo.num_gpus, topo.num_nodes) != (first.num_gpus, first.num_nodes):
            raise UsageError(f"topology has {topo.num_gpus} GPUs in {topo.num_nodes} node(s), the placements "
                             f"{first.num_gpus} GPUs in {first.num_nodes} node(s)")
        if tokens_per_step is not None and tokens_per_step < 1:
            raise UsageError(f"--tokens-per-step must be positive, got {tokens_per_step}")
        tokens = ds.num_tokens
        with progress_bar(tokens, "evaluate", unit="tok") as advance:
            results, ref_index = compare_on_trace(ds, cands, topo, mode_value, tokens_per_step, progress=advance)

    if as_json:
        rows = []
        for i, r in enumerate(results):
            d = r.to_dict()
            if i < len(cands):
                rep = cands[i].placement.report
                objective = rep.objective
                d = {"file": cands[i].where, "solver": rep.solver, "status": rep.status.value,
                     "objective": rep.objective_value, "objective_name": None if objective is None else objective.name,
                     "objective_measured": None if objective is None else objective.measure(r), **d}
                d["same_gpu_copies"] = int(cands[i].placement.same_gpu_copies_LG.sum())
                if moves is not None:
                    d["moves"] = moves[i].to_dict()
            else:
                d = {"file": None, "solver": "contiguous", **d}
            rows.append(d)
        print_json({
            "input": source_name, "mode": mode_value.value, "balance_only": balance_only, "tokens": tokens,
            "tokens_per_step": tokens_per_step, "topology": topo.to_dict() if topo else None,
            "reference": None if ref_index is None else results[ref_index].name, "placements": rows,
        })
        return

    con = console(min_width=120)
    con.print(_summary_table(results, cands, source_name, mode_value, topo, tokens, tokens_per_step, balance_only,
                             moves))
    if per_layer:
        for r in results:
            con.print(_layer_table(r))


def _display_name(path: Path, all_paths: list[Path]) -> str:
    stems = [p.stem for p in all_paths]
    return path.stem if stems.count(path.stem) == 1 else str(path)


def _label(r, cands, i) -> str:
    """The row label: the file's stem, with the solver when the stem does not say it."""
    if i >= len(cands):
        return "contiguous*"
    solver = cands[i].placement.report.solver
    return r.name if solver in r.name else f"{r.name} ({solver})"


def _columns(mode, multi_node: bool, balance_only: bool) -> list[str]:
    """The figure columns of a placement's row (after its label)."""
    cols = ["max/mean", "worst"]
    if not balance_only:
        cols += [f.label for f in TRAFFIC_FIGURES[mode] if multi_node or not f.nodes_only]
        cols += ["NVLink GB"] + (["network GB"] if multi_node else []) + ["time ms", "speedup"]
    return cols


def _figures(r, multi_node: bool, balance_only: bool) -> dict[str, float]:
    """The figures of one result by key, in ``_columns`` order (bytes and time are totals)."""
    f = {"max_over_mean": r.mean_imbalance, "worst_layer_max_over_mean": float(r.imbalance_L[r.worst_layer])}
    if not balance_only:
        f.update((fig.key, v) for fig, v in r.traffic_figures(multi_node))
        f["intra_bytes"] = int(r.intra_bytes_L.sum())
        if multi_node:
            f["inter_bytes"] = int(r.inter_bytes_L.sum())
        f["time_ms"], f["speedup"] = r.total_us / 1e3, r.speedup
    return f


def _format(figures: dict[str, float], worst_layer: int | None = None) -> list[str]:
    """``_figures`` as table cells (the worst layer's number after its figure when given)."""
    cells = []
    for k, v in figures.items():
        if k in ("intra_bytes", "inter_bytes"):
            cells.append(f"{v / 1e9:.3f}")
        elif k == "time_ms":
            cells.append(f"{v:,.2f}")
        elif k == "speedup":
            cells.append(f"{v:.2f}x")
        else:
            cells.append(f"{v:.3f}" + (f" L{worst_layer}" if k == "worst_layer_max_over_mean" and worst_layer is not None
                                       else ""))
    return cells


def _cells(r, mode, multi_node: bool, balance_only: bool) -> list[str]:
    """The figures of one result, in ``_columns`` order."""
    return _format(_figures(r, multi_node, balance_only), r.worst_layer)


def _caption(mode, tokens_per_step, balance_only: bool) -> str:
    if balance_only:
        return "load-only statistics: only load balance was evaluated (traffic and time need a trace)"
    step = "whole trace as one step" if tokens_per_step is None else f"steps of {tokens_per_step:,} tokens"
    traffic = ("remote GPUs/nodes: distinct remote GPUs/nodes a token is dispatched to per layer" if mode is TrafficMode.EP
               else "msgs (cross-node msgs): messages (across nodes) per token between adjacent layers; hops: "
                    "expert-pair hops per token")
    return (f"max/mean: GPU load, mean over layers; worst: the worst layer's; {traffic}; time: slowest GPU's compute "
            f"+ communication, summed over layers ({step}); speedup over contiguous (* added by evaluate as the "
            f"reference). Definitions: docs/cost-model.md")


def _summary_table(results, cands, source, mode, topo, tokens, tokens_per_step, balance_only, moves=None):
    if balance_only:
        title = f"evaluate on {source} (load only)"
    else:
        title = (f"evaluate on {source}: {tokens:,} tokens, mode {mode}, {topo.num_gpus} GPUs in "
                 f"{topo.num_nodes} node(s)")
    caption = _caption(mode, tokens_per_step, balance_only)
    if moves is not None:
        caption += "; moves: expert copies to load from --moves-from (GPUs matched)"
    twice = [int(c.placement.same_gpu_copies_LG.sum()) for c in cands]
    if any(twice):
        caption += "; 2nd copies: slots holding a second copy of an expert their GPU already holds (wasted)"
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    multi_node = topo is not None and topo.num_nodes > 1
    labels = [_label(r, cands, i) for i, r in enumerate(results)]
    t.add_column("placement", no_wrap=True, min_width=max(map(len, labels)))
    for c in _columns(mode, multi_node, balance_only) + (["moves"] if moves is not None else []) + \
            (["2nd copies"] if any(twice) else []):
        t.add_column(c, justify="right")
    for i, r in enumerate(results):
        row = [labels[i], *_cells(r, mode, multi_node, balance_only)]
        if moves is not None:
            row.append(f"{moves[i].total:,}" if i < len(moves) else "")
        if any(twice):
            row.append(f"{twice[i]:,}" if i < len(twice) else "")
        t.add_row(*row)
    return t


def _moves(cands, moves_from):
    """[MoveCount] of every candidate from the ``--moves-from`` placement (GPUs matched), or None."""
    if moves_from is None:
        return None
    from placer.core.moves import align, check_same_shape, count_moves  # lazy: loads OR-Tools; kept out of --help
    from placer.core.placement_io import load_placement  # lazy: loads jsonschema; kept out of --help

    current = load_placement(moves_from)
    out = []
    for c in cands:
        try:
            check_same_shape(current, c.placement, (f"--moves-from {moves_from}", str(c.where)))
        except ValueError as exc:
            raise UsageError(f"{exc}: moves are counted between placements of one model on one set of GPUs") from None
        out.append(count_moves(current, align(current, c.placement)))
    return out


def _evaluate_scenarios(paths, stats_files, load_files, scenarios, mode, gpus, nodes, topology_file, tokens_per_step,
                        moves_from, as_json) -> None:
    """``evaluate --scenarios``: every placement on every scenario, then its worst and mean over them."""
    from placer.core.placement_io import load_placement  # lazy: loads jsonschema; kept out of --help
    from placer.evaluate import Candidate, check_candidates, compare_on_load, compare_on_trace  # lazy: loads the solvers; kept out of --help
    from placer.inputs import resolve_topology  # lazy: loads the solvers; kept out of --help
    from placer.scenarios import ScenarioSpec, read_scenarios  # lazy: loads the solvers; kept out of --help

    spec = ScenarioSpec.parse(scenarios)
    traces = [p for p in paths if p.suffix.lower() != ".json"]
    placement_paths = [p for p in paths if p.suffix.lower() == ".json"]
    if not placement_paths:
        raise UsageError("give at least one placement file (.json) to evaluate")
    cands = [Candidate(_display_name(p, placement_paths), load_placement(p), str(p)) for p in placement_paths]
    first = cands[0].placement
    mode = mode if mode is not None else first.report.mode
    read = read_scenarios(traces, stats_files, load_files, spec, with_paths=True)
    s0 = read[0].stats
    check_candidates(cands, s0.num_layers, s0.num_experts, f"scenario {read[0].name}", s0.moe_layer_indices or None)
    topo = resolve_topology(gpus, nodes, topology_file, default=first.topology or preset(first.num_gpus, first.num_nodes))
    moves = _moves(cands, moves_from)
    # Step 1: every placement (and the contiguous reference) on every scenario.
    per: list[list] = []
    for sc in read:
        if sc.paths is not None:
            results, _ = compare_on_trace(sc.paths, cands, topo, mode, tokens_per_step)
        else:
            results = compare_on_load(sc.stats.load_LE, cands, mode)
        per.append(results)
    balance_only = any(sc.paths is None for sc in read)
    n = len(cands) + (1 if len(per[0]) > len(cands) else 0)
    if as_json:
        rows = []
        for i in range(n):
            rs = [results[i] for results in per]
            worst, mean = _worst_and_mean(rs, balance_only)
            d = {"file": cands[i].where if i < len(cands) else None, "name": rs[0].name,
                 "scenarios": {sc.name: r.to_dict() for sc, r in zip(read, rs)}, "worst": worst, "mean": mean}
            if i < len(cands):
                objective = cands[i].placement.report.objective
                if objective is not None and objective.robust is not None and not balance_only:
                    d["objective_measured"] = objective.measure_scenarios(rs)
            if moves is not None and i < len(cands):
                d["moves"] = moves[i].to_dict()
            rows.append(d)
        print_json({"scenarios": [{"name": sc.name, "tokens": sc.tokens} for sc in read], "mode": mode.value,
                    "balance_only": balance_only, "topology": topo.to_dict(), "placements": rows})
        return
    # Step 2: one row per placement and scenario, then the placement's worst and mean over the scenarios.
    multi_node = topo.num_nodes > 1
    t = Table(title=f"evaluate on {len(read)} scenarios ({spec}), mode {mode}, {topo.num_gpus} GPUs in "
                    f"{topo.num_nodes} node(s)",
              caption=_caption(mode, tokens_per_step, balance_only) + "; rows worst / mean: each figure's worst "
                      "scenario (the highest; speedup: the lowest) / mean over the scenarios (GB and ms are "
                      "totals: they grow with a scenario's tokens)",
              title_justify="left", caption_justify="left")
    t.add_column("placement", no_wrap=True)
    t.add_column("scenario")
    for c in _columns(mode, multi_node, balance_only) + (["moves"] if moves is not None else []):
        t.add_column(c, justify="right")
    for i in range(n):
        rs = [results[i] for results in per]
        label = _label(rs[0], cands, i)
        for k, (sc, r) in enumerate(zip(read, rs)):
            extra = [f"{moves[i].total:,}" if k == 0 and i < len(cands) else ""] if moves is not None else []
            t.add_row(label if k == 0 else "", sc.name, *_cells(r, mode, multi_node, balance_only), *extra)
        for k, agg in enumerate(_worst_and_mean(rs, balance_only, multi_node)):
            cells = _format(agg) + ([""] if moves is not None else [])
            t.add_row("", ("worst", "mean")[k], *cells, style="bold", end_section=k == 1)
    con = console(min_width=140)
    con.print(t)


def _worst_and_mean(rs, balance_only: bool, multi_node: bool = True) -> tuple[dict, dict]:
    """A placement's figures over its scenarios' results ``rs``: each one's worst (the highest; the speedup's the
    lowest) and its mean: max/mean load (mean over layers, and the worst layer), the traffic figures per token,
    bytes and time (totals, which grow with a scenario's tokens)."""
    figures = [_figures(r, multi_node, balance_only) for r in rs]
    values = {k: [f[k] for f in figures] for k in figures[0]}
    worst = {k: (min(v) if k == "speedup" else max(v)) for k, v in values.items()}
    return worst, {k: float(np.mean(v)) for k, v in values.items()}


def _load(v: float) -> str:
    """A GPU load: whole tokens, or four significant digits for real-valued loads (rates) below 1000."""
    return f"{v:,.0f}" if abs(v) >= 1000 or float(v).is_integer() else f"{v:.4g}"


def _layer_table(r):
    t = Table(title=f"{r.name}: per layer (traffic per token; coherent: from the layer before)", title_justify="left")
    multi_node = r.num_nodes > 1
    figures = [f for f in TRAFFIC_FIGURES[r.mode] if multi_node or not f.nodes_only]
    cols = ["layer", "max load", "mean load", "max/mean"]
    if not r.balance_only:
        cols += [f.label for f in figures] + ["compute us", "comm us"]
    for c in cols:
        t.add_column(c, justify="right")
    for l in range(r.num_layers):
        row = [str(l), _load(r.max_load_L[l]), _load(r.mean_load_L[l]), f"{r.imbalance_L[l]:.3f}"]
        if not r.balance_only:
            # Per layer: ep counts are [L]; coherent ones [L-1], transition l-1 -> l shown at layer l.
            k = l if r.mode is TrafficMode.EP else l - 1
            for f in figures:
                n = getattr(r, f.tokens)[k] if k >= 0 else 0
                row.append(f"{getattr(r, f.counts)[k] / n:.3f}" if n else "-")
            row += [f"{r.compute_us_L[l]:,.1f}", f"{r.comm_us_L[l]:,.1f}"]
        t.add_row(*row)
    return t


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
