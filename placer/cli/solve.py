"""``moeplace solve``: run a registered solver on routing statistics and write the placement."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.table import Table

from placer.cli._options import (GPUS_HELP, LOAD_HELP, NODES_HELP, ROBUST_HELP, SCENARIOS_HELP, STATS_HELP,
                                 TOPOLOGY_HELP, check_solver)
from placer.cli.common import UsageError, console, kv_table, print_json
from placer.core.fileio import prepare_output
from placer.core.mode import TrafficMode


def solve(
    traces: Optional[List[Path]] = typer.Argument(
        None, help="Trace file(s) or folders, read together (each one a scenario with --scenarios inputs)."),
    stats_files: Optional[List[Path]] = typer.Option(None, "--stats", help=STATS_HELP),
    load_files: Optional[List[Path]] = typer.Option(None, "--load", help=LOAD_HELP),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help=SCENARIOS_HELP),
    robust: Optional[str] = typer.Option(None, "--robust", help=ROBUST_HELP),
    holdout_check: bool = typer.Option(
        False, "--holdout-check", help="With --scenarios: also solve once per scenario left out and report how that "
        "placement does on the scenario it did not see (how much of the in-sample figure to believe)."),
    solver: str = typer.Option(
        "auto", "--solver", "-s", callback=check_solver,
        help="Registered solver (solvers.SOLVER_NAMES): auto (default: exact where the structure allows, a "
             "scalable decomposition otherwise), cpsat, moetuner, exflow, and the baselines contiguous, "
             "round_robin, random, greedy, eplb; docs/solvers.md describes them."),
    gpus: Optional[int] = typer.Option(None, "--gpus", "-g", help=GPUS_HELP),
    nodes: Optional[int] = typer.Option(None, "--nodes", "-n", help=NODES_HELP),
    topology_file: Optional[Path] = typer.Option(None, "--topology", help=TOPOLOGY_HELP),
    redundant: int = typer.Option(0, "--redundant", "-r", help="Redundant slots per layer (copies of hot experts)."),
    mode: TrafficMode = typer.Option(TrafficMode.EP, "--mode", help="Traffic model to solve for: ep or coherent."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same inputs and seed give the same placement."),
    time_limit: float = typer.Option(
        60.0, "--time-limit", help="Seconds a solve may take on the wall clock, reading the inputs apart: it ends "
                                   "within the limit plus 10 % (auto/cpsat: a budget in calibrated work units and "
                                   "deterministic time, so results repeat unless the clock cuts them; see "
                                   "docs/solvers.md)."),
    threads: int = typer.Option(
        0, "--threads", help="Solver threads (0 = the solver's default: one). auto in ep mode (or on loads "
                             "only): N layers searched at once in worker processes, with the serial result; "
                             "coherent and cpsat: N interleaved CP-SAT workers; MILP solvers: N threads."),
    groups: Optional[int] = typer.Option(
        None, "--groups", help="eplb: expert groups (DeepSeek-V3's n_group); hierarchical if nodes divide them."),
    balance_weight: Optional[float] = typer.Option(
        None, "--balance-weight", help="auto/cpsat: weight of one token of a layer's largest GPU load (default: from the "
                                       "topology's time model; docs/solvers.md)."),
    intra_weight: Optional[float] = typer.Option(
        None, "--intra-weight", help="auto/cpsat/exflow: weight of one NVLink message or hop (default 1)."),
    inter_weight: Optional[float] = typer.Option(
        None, "--inter-weight", help="auto/cpsat/exflow: weight of one message or hop across nodes (default: "
                                     "intra weight x NVLink / network bandwidth, 9 with the H100 preset)."),
    max_imbalance: Optional[float] = typer.Option(
        None, "--max-imbalance", help="auto/cpsat: cap on each layer's largest GPU load as a multiple of its "
                                      "mean (default 1.05; 0 = no cap)."),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="moetuner/exflow: MILP backend, cbc (bundled with PuLP, default) or highs."),
    batches: Optional[int] = typer.Option(
        None, "--batches", help="exflow: token batches added one solve at a time, with warm starts (default 4)."),
    out: Path = typer.Option(..., "--out", "-o", help="Placement JSON to write."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Solve where every expert lives, from traces (taken together), stats files or load matrices.

    Writes a placement JSON (docs/cost-model.md explains what evaluate then measures) and prints a summary:
    solver, status, objective, bound, gap, wall time and the max/mean GPU load on the input. With --scenarios
    the inputs are workloads the placement must all serve (docs/robust.md): auto minimises the worst (or mean)
    scenario, each per token; other solvers are given their sum; the summary shows every scenario.
    """
    # lazy: these load the solvers (numba, OR-Tools) and jsonschema; kept out of `moeplace --help`
    from placer.core.cost import evaluate_load
    from placer.core.placement_io import save_placement
    from placer.inputs import problem_from_stats, resolve_topology
    from placer.scenarios import holdout_check as leave_one_out, read_scenarios, sampling_note, scenario_problems
    from solvers import PlacementProblem, SolveOptions, get_solver

    topo = resolve_topology(gpus, nodes, topology_file)
    spec = get_solver(solver)
    params = solver_params(spec, groups=groups, balance_weight=balance_weight, intra_weight=intra_weight,
                           inter_weight=inter_weight, max_imbalance=max_imbalance, backend=backend, batches=batches)
    scenario_spec = _scenario_options(scenarios, robust, holdout_check)
    prepare_output(out)

    def check_shape(num_layers: int, num_experts: int) -> None:
        """Refuse a shape that cannot be placed before a long pass over the traces."""
        try:
            PlacementProblem(np.zeros((num_layers, num_experts)), topo, num_redundant=redundant, mode=mode)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    read = read_scenarios(traces or [], stats_files or [], load_files or [], scenario_spec, check_shape,
                          with_paths=bool(traces) and spec.token_paths)
    try:
        options = SolveOptions(time_limit_s=time_limit, seed=seed, threads=threads, params=params)
        if scenario_spec is None:
            problem = problem_from_stats(read[0].stats, topo, redundant, mode, paths=read[0].paths)
        else:
            scn = scenario_problems(read, topo, redundant, mode, robust)
            problem = scn.first
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        placement = spec(problem, options) if scenario_spec is None else spec.solve_scenarios(scn, options)
        held = leave_one_out(spec, scn, options) if holdout_check else None
    except ValueError as exc:
        raise UsageError(f"{solver}: {exc}") from None
    save_placement(placement, out)

    load_LE = sum(s.stats.load_LE for s in read)
    bal = evaluate_load(load_LE, placement)
    r = placement.report
    summary = {
        "out": str(out), "solver": r.solver, "status": r.status.value, "mode": r.mode.value,
        "objective": r.objective_value, "objective_name": None if r.objective is None else r.objective.name,
        "bound": r.bound, "gap": r.gap, "wall_time_s": r.wall_time_s,
        "shape": {"layers": placement.num_layers, "experts": placement.num_experts,
                  "slots": placement.num_slots, "gpus": placement.num_gpus, "nodes": placement.num_nodes},
        "input": problem.source if scenario_spec is None else ", ".join(s.name for s in read),
        "input_load_only": any(s.stats.load_only for s in read),
        "max_over_mean_load": bal.mean_imbalance,
        "worst_layer": bal.worst_layer, "worst_max_over_mean_load": float(bal.imbalance_L[bal.worst_layer]),
        "sampling_note": sampling_note(read, placement.num_gpus),
    }
    if summary["input_load_only"] and scenario_spec is None:
        summary.update(_load_only_bound(load_LE, placement, bal, problem, params))
    twice = int(placement.same_gpu_copies_LG.sum())
    summary["same_gpu_copies"] = twice
    if twice:
        print(f"moeplace: warning: {twice} slot(s) hold a second copy of an expert their GPU already holds (wasted: "
              f"the copies split the same GPU's tokens){'; eplb keeps DeepSeek EPLB behaviour' if solver == 'eplb' else ''}",
              file=sys.stderr)
    if "scenarios" in r.extra:
        summary["scenarios"] = r.extra["scenarios"]
    if held is not None:
        summary["holdout_check"] = held
    if as_json:
        print_json(summary)
        return

    def num(v, fmt="{:,.4g}"):
        return "-" if v is None else fmt.format(v)

    objective = num(summary["objective"]) + (f" ({summary['objective_name']})" if summary["objective_name"] else "")
    lb = summary.get("balance_bound")
    con = console()
    con.print(kv_table(f"wrote {out}", [
        ("solver", f"{r.solver} ({r.mode})"),
        ("status", r.status),
        ("objective", objective),
        ("bound / gap", f"{num(summary['bound'])} / {num(summary['gap'], '{:.2%}')}"
                        + (" (the balance bound below)" if summary.get("bound_source") == "balance" else "")),
        *([("load: largest / bound / gap", f"{lb['max_load']:,.6g} / {lb['bound']:,.6g} / {lb['gap']:.2%} (tokens "
                                           f"per GPU, summed over layers)")] if lb else []),
        ("wall time", f"{r.wall_time_s:.3f} s"),
        ("shape", f"{placement.num_layers} x {placement.num_experts} experts + {placement.num_redundant} "
                  f"redundant, {placement.num_gpus} GPUs, {placement.num_nodes} node(s)"),
        ("max/mean load (input)", f"{bal.mean_imbalance:.3f} (mean of layers); worst: "
                                  f"{bal.imbalance_L[bal.worst_layer]:.3f} (layer {bal.worst_layer})"),
    ]))
    if "scenarios" in summary:
        con = console(min_width=140)
        con.print(_scenario_table(summary["scenarios"], held, placement.num_nodes > 1))
    if summary["sampling_note"]:
        con.print(f"note: {summary['sampling_note']}", soft_wrap=True, highlight=False)


def _load_only_bound(load_LE, placement, bal, problem, params) -> dict:
    """A load-only solve's balance bound, the same for every solver (``solvers.bounds.load_balance_bounds``: the
    mean load per GPU, the heaviest copy with the lightest others, over every placement of these slots), as a
    load: each layer's largest GPU load and its bound, summed over the layers, and the gap. A solver that
    reported no bound (every one but auto and cpsat) also gets the objective, bound and gap in the objective's
    units (the balance weight times the load); auto and cpsat keep their own there."""
    # lazy: loads the solvers; kept out of --help
    from solvers.bounds import gap_of, load_balance_bounds
    from solvers.instance import weights_of

    r = placement.report
    largest = float(bal.load_LG.max(axis=1).sum())
    bound = float(load_balance_bounds(load_LE, placement.num_gpus, placement.slots_per_gpu).sum())
    out: dict = {}
    weight = weights_of(params, problem).balance_weight
    if r.bound is None and weight > 0:
        out.update(objective=weight * largest, objective_name=f"{weight!r}*max_load", bound=weight * bound,
                   gap=gap_of(weight * largest, weight * bound), bound_source="balance")
    out["balance_bound"] = {"max_load": largest, "bound": bound, "gap": gap_of(largest, bound),
                            "unit": "tokens per GPU, summed over the layers"}
    return out


def _scenario_options(scenarios: str | None, robust: str | None, holdout: bool):
    """The parsed --scenarios, after checking --robust and --holdout-check against it."""
    from placer.scenarios import ScenarioSpec  # lazy: loads the solvers; kept out of --help

    if scenarios is None:
        for flag, given in (("--robust", robust is not None), ("--holdout-check", holdout)):
            if given:
                raise UsageError(f"{flag} needs --scenarios (inputs, domain, phase or window:N)")
        return None
    if robust is not None and robust not in ("worst", "mean"):
        raise UsageError(f"--robust {robust!r}: choose worst or mean")
    return ScenarioSpec.parse(scenarios)


# The traffic figures of the scenario table (``scenario_figures``' keys): column label, key, only across nodes.
_SCENARIO_TRAFFIC = (("remote GPUs", "remote_gpus_avg_per_token_layer", False),
                     ("remote nodes", "remote_nodes_avg_per_token_layer", True),
                     ("hops", "pair_hops_per_token_transition", False),
                     ("cross-node hops", "node_pair_hops_per_token_transition", True))


def _scenario_table(fig: dict, held: dict | None, multi_node: bool):
    """One row per scenario (and the worst and the mean): objective per token, balance, traffic, leave-one-out."""
    traffic = [(label, key) for label, key, nodes_only in _SCENARIO_TRAFFIC
               if key in fig["worst"] and (multi_node or not nodes_only)]
    ep = any(key.endswith("_layer") for _, key in traffic)
    caption = ("remote GPUs/nodes: distinct remote GPUs/nodes a token is dispatched to per layer (averaged over its "
               "home GPU)" if ep else "hops (cross-node hops): expert-pair hops (across nodes) per token between "
               "adjacent layers") if traffic else None
    t = Table(title=f"scenarios (robust: {fig['aggregate']}; objective per token)", title_justify="left",
              caption=caption, caption_justify="left")
    cols = ["scenario", "tokens", "objective/token", "max/mean", "worst layer"] + [label for label, _ in traffic]
    if held is not None:
        cols += ["held-out objective/token", "held-out max/mean"]
    for c in cols:
        t.add_column(c, justify="left" if c == "scenario" else "right")
    rows = {h["name"]: h for h in held["scenarios"]} if held is not None else {}

    def figures(row: dict) -> list[str]:
        return [f"{row['objective_per_token']:,.4g}", f"{row['max_over_mean']:.3f}",
                f"{row['worst_layer_max_over_mean']:.3f}"] + [f"{row[key]:.3f}" if key in row else "-"
                                                              for _, key in traffic]

    for row in fig["scenarios"]:
        cells = [row["name"], f"{row['tokens']:,.0f}", *figures(row)]
        if held is not None:
            h = rows[row["name"]]
            cells += [f"{h['objective_per_token']:,.4g}", f"{h['max_over_mean']:.3f}"]
        t.add_row(*cells)
    for agg in ("worst", "mean"):
        cells = [agg, "", *figures(fig[agg])]
        if held is not None:
            cells += [f"{held[agg]['objective_per_token']:,.4g}", f"{held[agg]['max_over_mean']:.3f}"]
        t.add_row(*cells, style="bold")
    return t


def solver_params(spec, **given: object) -> dict:
    """``SolveOptions.params`` from the command line's solver options; an option the solver does not take (its
    registration's ``params``) is a usage error naming the solvers that do."""
    from solvers import specs  # lazy: loads the solvers; kept out of --help

    params = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in spec.params:
            takers = [s.name for s in specs() if name in s.params]
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} applies to {', '.join(takers)}, not {spec.name}")
        params[name] = value
    return params


def register(app: typer.Typer) -> None:
    app.command("solve")(solve)
