"""``moeplace rebalance``: a new placement for new traffic within a budget of moves from the current one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.table import Table

from placer.cli._options import LOAD_HELP, ROBUST_HELP, SCENARIOS_HELP, STATS_HELP, check_solver
from placer.cli.common import UsageError, console, kv_table, print_json
from placer.core.fileio import prepare_output, read_model_config, write_json_atomic
from placer.core.topology import preset
from placer.plots.timeline import plot_front


def rebalance(
    current: Path = typer.Argument(..., help="The placement serving now (JSON); GPUs, nodes and slots come from it."),
    traces: Optional[List[Path]] = typer.Argument(None, help="New traffic: trace file(s) or folders."),
    stats_files: Optional[List[Path]] = typer.Option(None, "--stats", help=STATS_HELP),
    load_files: Optional[List[Path]] = typer.Option(None, "--load", help=LOAD_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="The new placement (JSON), its GPUs in CURRENT's order."),
    max_moves_per_layer: Optional[int] = typer.Option(
        None, "--max-moves-per-layer", help="At most this many expert copies loaded onto a GPU per layer."),
    max_moves: Optional[int] = typer.Option(None, "--max-moves", help="At most this many moves in all layers."),
    solver: str = typer.Option(
        "auto", "--solver", "-s", callback=check_solver,
        help="The full re-solve the steps move towards (any registered solver; default auto)."),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help=SCENARIOS_HELP),
    robust: Optional[str] = typer.Option(None, "--robust", help=ROBUST_HELP),
    expert_bytes: Optional[float] = typer.Option(
        None, "--expert-bytes", help="Bytes of one expert's weights, to report the moves as bytes."),
    model: Optional[Path] = typer.Option(
        None, "--model", help="A Hugging Face checkpoint folder: the expert's bytes from its config.json "
                              "(3 x hidden x expert FFN size x bytes of its dtype)."),
    pareto: bool = typer.Option(
        False, "--pareto", help="Also print and write (OUT.pareto.json, OUT.pareto.png) the objective after 0, 1, 2, "
                                "4, ... moves up to the full re-solve, to choose the budget at the knee (with "
                                "--expert-bytes or --model, each point's bytes too)."),
    time_limit: float = typer.Option(
        60.0, "--time-limit",
        help="Seconds for the whole rebalance after reading the inputs: the full re-solve gets half, the steps "
             "and the front the rest (the summary says what the clock cut short)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same inputs and seed give the same placement."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rebalance CURRENT for new traffic, moving at most a budget of expert copies (weights that must travel).

    Solves the new traffic in full (--solver), renames its GPUs to share the most copies with CURRENT, then takes
    the steps towards it that gain the most per move while the budget allows, and the re-solve itself, whole or
    layer by layer, where it fits the budget and scores better (docs/robust.md). A budget of 0 keeps CURRENT
    (without solving). The new placement is written with CURRENT's GPU names, so the moves are counted GPU by GPU
    between the two files; --expert-bytes or --model turns them into bytes inside and across nodes.
    """
    # lazy: these load the solvers (numba, OR-Tools) and jsonschema; kept out of `moeplace --help`
    from placer.core.moves import align, bytes_moved, count_moves
    from placer.core.placement_io import load_placement, save_placement
    from placer.inputs import problem_from_stats
    from placer.scenarios import ScenarioSpec, read_scenarios, scenario_problems
    from solvers import SolveOptions, get_solver
    from solvers.rebalance import RESOLVE_SHARE, Budget, compile_kernels, rebalance as run

    if max_moves_per_layer is None and max_moves is None and not pareto:
        raise UsageError("give a budget: --max-moves-per-layer K and/or --max-moves K (or --pareto)")
    try:
        budget = Budget(max_moves_per_layer, max_moves)
    except ValueError as exc:
        raise UsageError(f"--max-moves{'-per-layer' if 'per layer' in str(exc) else ''}: {exc}") from None
    if robust is not None and scenarios is None:
        raise UsageError("--robust needs --scenarios (inputs, domain, phase or window:N)")
    if expert_bytes is not None and model is not None:
        raise UsageError("give the expert's size with --expert-bytes or --model, not both")
    if expert_bytes is not None and not expert_bytes > 0:
        raise UsageError(f"--expert-bytes must be positive, got {expert_bytes}")
    if model is not None:
        expert_bytes = _expert_bytes(*read_model_config(model))
    cur = load_placement(current)
    for p in [out, out.with_suffix(".pareto.json"), out.with_suffix(".pareto.png")] if pareto else [out]:
        if p.exists() and p.resolve() == current.resolve():
            raise UsageError(f"{p}: the output would overwrite the current placement; write the new one elsewhere")
        prepare_output(p)
    topo = cur.topology or preset(cur.num_gpus, cur.num_nodes)
    spec = ScenarioSpec.parse(scenarios) if scenarios is not None else None

    def check(num_layers: int, num_experts: int) -> None:
        if (num_layers, num_experts) != (cur.num_layers, cur.num_experts):
            raise UsageError(f"{current}: the current placement has {cur.num_layers} layers x {cur.num_experts} "
                             f"experts, the new traffic {num_layers} x {num_experts}")

    solver_spec = get_solver(solver)
    read = read_scenarios(traces or [], stats_files or [], load_files or [], spec, check,
                          with_paths=bool(traces) and solver_spec.token_paths)
    # A budget of 0 keeps CURRENT: the full re-solve is needed only for --pareto.
    resolve = not budget.zero or pareto
    if resolve:  # kernels are compiled (or loaded) before the clock starts, as solve does (solvers/warmup.py)
        # with scenarios a solver with a robust solve runs only that one (SolverSpec.solve_scenarios)
        solver_spec.compile(cur.report.mode, robust=spec is not None and solver_spec.robust is not None)
        compile_kernels(cur.report.mode)
    # The limit covers the whole run from here: the full re-solve gets its share, the steps and the front the rest.
    clock = time.perf_counter()
    deadline = clock + time_limit
    options = SolveOptions(time_limit_s=time_limit * RESOLVE_SHARE, seed=seed)
    try:
        if spec is None:
            problems = [problem_from_stats(read[0].stats, topo, cur.num_redundant, cur.report.mode, read[0].paths)]
            weights = np.ones(1)
            target = solver_spec(problems[0], options) if resolve else None
        else:
            scn = scenario_problems(read, topo, cur.num_redundant, cur.report.mode, robust)
            problems, weights = list(scn.problems), scn.weights_s / len(scn.problems)
            target = solver_spec.solve_scenarios(scn, options) if resolve else None
        counts = _pareto_counts(count_moves(cur, align(cur, target)).total) if pareto else None
        new = run(problems, cur, target, budget, options, weights, counts, deadline=deadline)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    moved = count_moves(cur, new).to_dict(expert_bytes)
    # The report's wall time covers the whole run the limit covers (re-solve, steps and front).
    new = new.with_(report=new.report.with_(extra={**new.report.extra, "moves": moved},
                                            wall_time_s=time.perf_counter() - clock))
    save_placement(new, out)
    extra = new.report.extra
    summary = {"out": str(out), "current": str(current), "budget": extra["budget"], "moves": moved,
               "objective": new.report.objective_value, "current_objective": extra["current_objective"],
               "target": extra["target"], "took_target": extra["took_target"],
               "objective_name": new.report.objective.name, "stopped_by_time": extra["stopped_by_time"]}
    if pareto:
        front = extra["pareto"]
        if expert_bytes is not None:  # each point's bytes, as the summary's moves
            for point in front:
                point["bytes"] = bytes_moved(point["intra_node_moves"], point["inter_node_moves"], expert_bytes)
        summary["pareto"] = front
        write_json_atomic(out.with_suffix(".pareto.json"), {"current": str(current), "solver": solver,
                                                            "expert_bytes": expert_bytes, "front": front})
        plot_front(front, out.with_suffix(".pareto.png"), extra["current_objective"])
    if as_json:
        print_json(summary)
        return
    con = console()
    target = extra["target"]
    gain = extra["current_objective"] - target["objective"] if target else 0.0
    got = extra["current_objective"] - new.report.objective_value
    rows = [
        ("moves", f"{moved['moves']:,} of {cur.num_slots * cur.num_layers:,} copies ({moved['share_of_copies']:.1%}); "
                  f"at most {moved['moves_per_layer_max']} in a layer; {moved['inter_node_moves']:,} across nodes"),
        ("objective", f"{new.report.objective_value:,.4g} (current {extra['current_objective']:,.4g}; "
                      + (f"full re-solve {target['objective']:,.4g} with {target['moves']:,} moves)" if target else
                         "no full re-solve with a budget of 0)")),
        ("gain recovered", "not computed with a budget of 0 (no full re-solve)" if target is None else
                           f"{got / gain:.1%} of the full re-solve's" if gain > 0 else "the full re-solve gains nothing"),
    ]
    took = extra["took_target"]
    if took is not None:
        rows.append(("full re-solve taken", "whole: its moves fit the budget and it scores better" if took == "all" else
                     f"in layer{'s' if len(took) > 1 else ''} {', '.join(map(str, took))}: its rows fit the budget "
                     "there and score better than the steps'"))
    if extra["stopped_by_time"]:
        rows.append(("stopped by --time-limit", ", ".join(extra["stopped_by_time"])))
    if "bytes" in moved:
        b = moved["bytes"]
        rows.append(("bytes moved", f"{b['total'] / 1e9:,.2f} GB ({b['intra_node'] / 1e9:,.2f} GB inside nodes, "
                                    f"{b['inter_node'] / 1e9:,.2f} GB across)"))
    con.print(kv_table(f"wrote {out}", rows))
    if pareto:
        t = Table(title=f"objective against the budget (wrote {out.with_suffix('.pareto.json')} and .png)",
                  title_justify="left")
        for c in ("budget (moves)", "moves", "objective", "gain recovered") + (("GB moved (across nodes)",)
                                                                               if expert_bytes is not None else ()):
            t.add_column(c, justify="right")
        for point in front:
            rec = (extra["current_objective"] - point["objective"]) / gain if gain > 0 else 0.0
            cells = [str(point["budget"]), f"{point['moves']:,}", f"{point['objective']:,.4g}", f"{rec:.1%}"]
            if expert_bytes is not None:
                cells.append(f"{point['bytes']['total'] / 1e9:,.2f} ({point['bytes']['inter_node'] / 1e9:,.2f})")
            t.add_row(*cells)
        con.print(t)


def _pareto_counts(full: int) -> list[int]:
    """0, 1, 2, 4, ... below the full re-solve's moves."""
    out, k = [0], 1
    while k < full:
        out.append(k)
        k *= 2
    return out


def _expert_bytes(path: Path, cfg: dict) -> float:
    """One routed expert's weights: 3 matrices of hidden x expert FFN size, in the checkpoint's dtype."""
    hidden = cfg.get("hidden_size")
    ffn = cfg.get("moe_intermediate_size") or cfg.get("expert_intermediate_size") or cfg.get("intermediate_size")
    sizes = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    if not isinstance(hidden, int) or not isinstance(ffn, int) or dtype not in sizes:
        raise UsageError(f"{path}: cannot tell an expert's size (hidden_size {hidden!r}, expert FFN size {ffn!r}, "
                         f"dtype {dtype!r}); give --expert-bytes")
    return float(3 * hidden * ffn * sizes[dtype])


def register(app: typer.Typer) -> None:
    app.command("rebalance")(rebalance)
