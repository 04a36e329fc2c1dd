"""``moeplace rebalance``: a new placement for new traffic within a budget of moves from the current one."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from placer.cli._options import LOAD_HELP, ROBUST_HELP, SCENARIOS_HELP, STATS_HELP, check_solver
from placer.cli.common import UsageError, console, kv_table, print_json


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
                                "4, ... moves up to the full re-solve, to choose the budget at the knee."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Seconds for the full re-solve (as solve's)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same inputs and seed give the same placement."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rebalance CURRENT for new traffic, moving at most a budget of expert copies (weights that must travel).

    Solves the new traffic in full (--solver), renames its GPUs to share the most copies with CURRENT, then takes
    the steps towards it that gain the most per move while the budget allows (docs/robust.md). A budget of 0
    keeps CURRENT. The new placement is written with CURRENT's GPU names, so the moves are counted GPU by GPU
    between the two files; --expert-bytes or --model turns them into bytes inside and across nodes.
    """
    # Imported on use: the solvers load numba and OR-Tools (placer/cli/__init__.py).
    import numpy as np

    from placer.core.fileio import prepare_output, read_model_config, write_json_atomic
    from placer.core.moves import align, count_moves
    from placer.core.placement_io import load_placement, save_placement
    from placer.core.topology import preset
    from placer.inputs import problem_from_stats
    from placer.plots.timeline import plot_front
    from placer.scenarios import ScenarioSpec, read_scenarios, scenario_problems
    from solvers import SolveOptions, get_solver
    from solvers.rebalance import Budget, rebalance as run

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
    options = SolveOptions(time_limit_s=time_limit, seed=seed)
    try:
        if spec is None:
            problems = [problem_from_stats(read[0].stats, topo, cur.num_redundant, cur.report.mode, read[0].paths)]
            weights = np.ones(1)
            target = solver_spec(problems[0], options)
        else:
            scn = scenario_problems(read, topo, cur.num_redundant, cur.report.mode, robust)
            problems, weights = list(scn.problems), scn.weights_s / len(scn.problems)
            target = solver_spec.solve_scenarios(scn, options)
        counts = _pareto_counts(count_moves(cur, align(cur, target)).total) if pareto else None
        new = run(problems, cur, target, budget, options, weights, counts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    moved = count_moves(cur, new).to_dict(expert_bytes)
    new = new.with_(report=new.report.with_(extra={**new.report.extra, "moves": moved}))
    save_placement(new, out)
    extra = new.report.extra
    summary = {"out": str(out), "current": str(current), "budget": extra["budget"], "moves": moved,
               "objective": new.report.objective_value, "current_objective": extra["current_objective"],
               "target": extra["target"], "objective_name": new.report.objective.name}
    if pareto:
        front = extra["pareto"]
        summary["pareto"] = front
        write_json_atomic(out.with_suffix(".pareto.json"), {"current": str(current), "solver": solver,
                                                            "expert_bytes": expert_bytes, "front": front})
        plot_front(front, out.with_suffix(".pareto.png"), extra["current_objective"])
    if as_json:
        print_json(summary)
        return
    con = console()
    gain = extra["current_objective"] - extra["target"]["objective"]
    got = extra["current_objective"] - new.report.objective_value
    rows = [
        ("moves", f"{moved['moves']:,} of {cur.num_slots * cur.num_layers:,} copies ({moved['share_of_copies']:.1%}); "
                  f"at most {moved['moves_per_layer_max']} in a layer; {moved['inter_node_moves']:,} across nodes"),
        ("objective", f"{new.report.objective_value:,.4g} (current {extra['current_objective']:,.4g}; full re-solve "
                      f"{extra['target']['objective']:,.4g} with {extra['target']['moves']:,} moves)"),
        ("gain recovered", f"{got / gain:.1%} of the full re-solve's" if gain > 0 else "the full re-solve gains nothing"),
    ]
    if "bytes" in moved:
        b = moved["bytes"]
        rows.append(("bytes moved", f"{b['total'] / 1e9:,.2f} GB ({b['intra_node'] / 1e9:,.2f} GB inside nodes, "
                                    f"{b['inter_node'] / 1e9:,.2f} GB across)"))
    con.print(kv_table(f"wrote {out}", rows))
    if pareto:
        from rich.table import Table

        t = Table(title=f"objective against the budget (wrote {out.with_suffix('.pareto.json')} and .png)",
                  title_justify="left")
        for c in ("budget (moves)", "moves", "objective", "gain recovered"):
            t.add_column(c, justify="right")
        for point in front:
            rec = (extra["current_objective"] - point["objective"]) / gain if gain > 0 else 0.0
            t.add_row(str(point["budget"]), f"{point['moves']:,}", f"{point['objective']:,.4g}", f"{rec:.1%}")
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
