"""``moeplace bench solve``: the optimising solvers against the baselines, measured in the same run.

Parts (``--part``, all by default):

- ``mixtral``: Mixtral's shape (32 layers, 8 experts, top-2) on 4 and 8 GPUs, both traffic modes: the time
  ``auto`` (and ``cpsat``) take to a proven optimum, and the objective of every baseline.
- ``deepseek``: DeepSeek-V3's shape (58 layers, 256 experts, top-8) on 64 GPUs in 8 nodes with redundant
  slots, from a synthetic trace: ``auto``'s placement within ``--time-limit``, its bound and gap, and the
  baselines' objectives.
- ``scaling``: ``auto``'s time (to its first local optimum and in all) and gap over a grid of layers x
  experts x GPUs.
- ``heldout``: solved on a train trace, measured on a held-out trace at 4 GPUs: coherent pair hops and
  messages against ``contiguous``, ep remote fan-out against every baseline, max/mean GPU load, and load
  against ``eplb`` at equal redundancy. Uses the bundled model's ``traces/train.parquet`` and
  ``traces/heldout.parquet`` when they exist, else the two halves of one synthetic trace (said so).

Every objective is measured by the cost model (``Objective.measure`` on ``placer.core.cost``'s result) on the trace the
placement was solved on, so the solvers and the baselines are compared on one scale.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, List

import numpy as np
import typer
from rich.table import Table

from placer.cli.common import console, print_json
from placer.core.errors import InputError
from placer.core.mode import TrafficMode
from placer.core.topology import Topology

PARTS = ("mixtral", "deepseek", "scaling", "heldout")
BASELINES = ("contiguous", "round_robin", "random", "greedy", "eplb")
BALANCE_FIRST = 1000  # the balance weight of the balance-first run at equal redundancy
TRAFFIC_FIRST = {"balance_weight": 1, "max_imbalance": 1.1}  # a traffic-first run beside the default weights


def _trace(layers: int, experts: int, top_k: int, tokens: int, clusters: int, seed: int, affinity: float = 0.6):
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.trace.reader import concat_batches
    from placer.synth import SynthConfig, generate

    meta, batches = generate(SynthConfig(layers=layers, experts=experts, top_k=top_k, tokens=tokens, seed=seed,
                                         clusters=clusters, affinity=affinity, domains=2))
    return meta, concat_batches(list(batches))


def _problem(batch, experts: int, gpus: int, nodes: int, redundant: int, mode: str):
    # lazy: loads the solvers (numba, OR-Tools); kept out of `moeplace --help`
    from solvers.problem import PlacementProblem

    T, L, K = batch.experts_TLK.shape
    present = batch.present_or_ones()
    load = np.stack([np.bincount(batch.experts_TLK[present[:, l], l].ravel().astype(np.int64), minlength=experts)
                     for l in range(L)]).astype(np.float64)
    return PlacementProblem(load_LE=load, topology=Topology(gpus, nodes), num_redundant=redundant, mode=mode,
                            top_k=K, paths_TLK=batch.experts_TLK, present_TL=batch.present_TL, seq_T=batch.seq_T)


def _solve(name: str, problem, time_limit: float, params: dict | None = None):
    # lazy: loads the solvers (numba, OR-Tools); kept out of `moeplace --help`
    from solvers.problem import SolveOptions
    from solvers.registry import get_solver

    opts = SolveOptions(time_limit_s=time_limit, params=dict(params or {}))
    if name == "eplb" and problem.topology.num_nodes > 1 and problem.num_experts % problem.topology.num_nodes == 0:
        opts = SolveOptions(time_limit_s=time_limit, params={"groups": problem.topology.num_nodes})
    get_solver(name).compile(problem.mode)  # numba's compilation (or cache load) is not solve time
    t0 = time.perf_counter()
    p = get_solver(name)(problem, opts)
    return p, time.perf_counter() - t0


def _measure(batch, placements, problem, objective) -> list[dict[str, Any]]:
    """Each placement's ``objective`` (as the cost model measures it) and headline figures on ``batch``."""
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.cost import evaluate_many

    out = []
    for p, r in zip(placements, evaluate_many(batch, placements, problem.topology, problem.mode)):
        d = {"solver": p.report.solver, "objective": objective.measure(r), "max_over_mean": r.mean_imbalance}
        if problem.mode is TrafficMode.EP:
            d["remote_gpus_per_token"] = r.remote_gpus_per_token
            d["remote_nodes_per_token"] = r.remote_nodes_per_token
        else:
            d["pair_hops_per_token"] = r.pair_hops_per_token
            d["messages_per_token"] = r.messages_per_token
        out.append(d)
    return out


def _baselines(problem, redundant_ok: bool = True) -> list:
    out = []
    for name in BASELINES:
        p, _ = _solve(name, problem, 10.0)
        out.append(p)
    return out


def part_mixtral(tokens: int, time_limit: float, log) -> list[dict[str, Any]]:
    meta, batch = _trace(32, 8, 2, tokens, clusters=4, seed=0)
    rows = []
    for gpus in (4, 8):
        for mode in TrafficMode:
            problem = _problem(batch, 8, gpus, 1, 0, mode)
            runs = {}
            for solver in ("auto", "cpsat"):
                p, wall = _solve(solver, problem, time_limit)
                runs[solver] = (p, wall)
            base = _baselines(problem)
            objective = runs["auto"][0].report.objective
            measured = _measure(batch, [runs["auto"][0], *base], problem, objective)
            best_base = min(m["objective"] for m in measured[1:])
            row = {"gpus": gpus, "mode": mode, "objective_name": objective.name,
                   "auto": {"status": runs["auto"][0].report.status, "wall_s": runs["auto"][1],
                            "objective": runs["auto"][0].report.objective_value, "gap": runs["auto"][0].report.gap,
                            "method": runs["auto"][0].report.extra.get("method")},
                   "cpsat": {"status": runs["cpsat"][0].report.status, "wall_s": runs["cpsat"][1],
                             "objective": runs["cpsat"][0].report.objective_value, "gap": runs["cpsat"][0].report.gap},
                   "baselines": {m["solver"]: m["objective"] for m in measured[1:]},
                   "auto_vs_best_baseline": measured[0]["objective"] / best_base}
            rows.append(row)
            log(f"mixtral {gpus} GPUs {mode}: auto {row['auto']['status']} in {row['auto']['wall_s']:.2f} s, "
                f"cpsat {row['cpsat']['status']} in {row['cpsat']['wall_s']:.2f} s")
    return rows


def part_deepseek(tokens: int, time_limit: float, redundant: int, gpus: int, nodes: int, mode: str,
                  log) -> dict[str, Any]:
    t0 = time.perf_counter()
    meta, batch = _trace(58, 256, 8, tokens, clusters=64, seed=0, affinity=0.5)
    gen = time.perf_counter() - t0
    problem = _problem(batch, 256, gpus, nodes, redundant, mode)
    p, wall = _solve("auto", problem, time_limit)
    log(f"deepseek: auto {p.report.status} in {wall:.1f} s, gap {p.report.gap:.1%}")
    base = _baselines(problem)
    measured = _measure(batch, [p, *base], problem, p.report.objective)
    best = min(m["objective"] for m in measured[1:])
    return {"shape": {"layers": 58, "experts": 256, "top_k": 8, "tokens": tokens, "gpus": gpus, "nodes": nodes,
                      "redundant": redundant, "mode": mode},
            "trace_generation_s": gen,
            "auto": {"status": p.report.status, "wall_s": wall, "objective": p.report.objective_value, "bound": p.report.bound, "gap": p.report.gap,
                     "phase_end_s": p.report.extra.get("phase_end_s"), "stopped_by_wall_clock": p.report.extra.get("stopped_by_wall_clock")},
            "measured": measured, "auto_vs_best_baseline": measured[0]["objective"] / best}


SCALING_SHAPES = ((8, 64, 4, 8, 1), (16, 64, 4, 8, 1), (16, 128, 8, 16, 2), (32, 128, 8, 16, 2),
                  (32, 256, 8, 32, 4), (58, 256, 8, 64, 8))  # layers, experts, top-k, gpus, nodes


def part_scaling(tokens: int, time_limit: float, log) -> list[dict[str, Any]]:
    rows = []
    for L, E, K, G, N in SCALING_SHAPES:
        meta, batch = _trace(L, E, K, tokens, clusters=max(G, 4), seed=1)
        for mode in TrafficMode:
            problem = _problem(batch, E, G, N, 0, mode)
            p, wall = _solve("auto", problem, time_limit)
            base = _baselines(problem)
            measured = _measure(batch, [p, *base], problem, p.report.objective)
            best = min(m["objective"] for m in measured[1:])
            ph = p.report.extra.get("phase_end_s", {})
            rows.append({"layers": L, "experts": E, "top_k": K, "gpus": G, "nodes": N, "mode": mode,
                         "size": L * E * G, "status": p.report.status, "wall_s": wall,
                         "first_local_optimum_s": ph.get("local_search", ph.get("exact")),
                         "gap": p.report.gap, "auto_vs_best_baseline": measured[0]["objective"] / best})
            log(f"scaling {L}x{E}x{G} {mode}: {wall:.1f} s, gap {p.report.gap:.1%}")
    return rows


def part_heldout(train: Path, heldout: Path, time_limit: float, redundant: int, log) -> dict[str, Any]:
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.cost import evaluate_many
    from placer.core.trace.reader import TraceDataset, concat_batches

    if train.exists() and heldout.exists():
        tr = TraceDataset([train]).read_all(fields=("experts", "present", "seq"))
        ho = TraceDataset([heldout]).read_all(fields=("experts", "present", "seq"))
        E = TraceDataset([train]).meta.num_experts
        source = f"{train} / {heldout}"
    else:
        meta, both = _trace(8, 16, 2, 12000, clusters=4, seed=2)
        half = len(both) // 2
        # lazy: loads pyarrow; kept out of `moeplace --help`
        from placer.core.trace.schema import RoutingBatch

        tr = RoutingBatch(experts_TLK=both.experts_TLK[:half], seq_T=both.seq_T[:half])
        ho = RoutingBatch(experts_TLK=both.experts_TLK[half:], seq_T=both.seq_T[half:])
        E = 16
        source = "synthetic stand-in (8 x 16, top-2, 4 clusters): first half train, second half held-out"
    _ = concat_batches
    out: dict[str, Any] = {"source": source, "gpus": 4}
    for mode in TrafficMode:
        problem = _problem(tr, E, 4, 1, 0, mode)
        p, wall = _solve("auto", problem, time_limit)
        params = dict(TRAFFIC_FIRST)
        try:
            light, _ = _solve("auto", problem, time_limit, params)
        except ValueError:  # the cap is below what any placement reaches on this trace: weight alone
            params.pop("max_imbalance")
            light, _ = _solve("auto", problem, time_limit, params)
        placements = [p, light] + _baselines(problem)
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in params.items())
        names = ["auto", f"auto {flags}"] + [b.report.solver for b in placements[2:]]
        res = evaluate_many(ho, placements, problem.topology, mode)
        rows = []
        for name, r in zip(names, res):
            d = {"solver": name, "max_over_mean": r.mean_imbalance, "worst_max_over_mean": float(r.imbalance_L.max()),
                 "time_ms": r.total_us / 1e3}
            if mode is TrafficMode.EP:
                d["remote_gpus_per_token"] = r.remote_gpus_per_token
            else:
                d["pair_hops_per_token"] = r.pair_hops_per_token
                d["messages_per_token"] = r.messages_per_token
            rows.append(d)
        out[mode] = {"auto_status": p.report.status, "auto_wall_s": wall, "auto_gap": p.report.gap, "heldout": rows}
        log(f"heldout {mode}: auto {p.report.status} in {wall:.1f} s")
    # Equal redundancy: auto (default weights, and balance first) and eplb with the same redundant slots:
    # balance on the train and the held-out trace.
    problem = _problem(tr, E, 4, 1, redundant, TrafficMode.EP)
    pa, _ = _solve("auto", problem, time_limit)
    pb, _ = _solve("auto", problem, time_limit, {"balance_weight": BALANCE_FIRST})
    pe, _ = _solve("eplb", problem, time_limit)
    rows = []
    for name, p, r, t in zip(("auto", f"auto --balance-weight {BALANCE_FIRST}", "eplb"), (pa, pb, pe),
                             evaluate_many(ho, [pa, pb, pe], problem.topology, TrafficMode.EP),
                             evaluate_many(tr, [pa, pb, pe], problem.topology, TrafficMode.EP)):
        rows.append({"placement": name, "train_max_over_mean": t.mean_imbalance,
                     "heldout_max_over_mean": r.mean_imbalance, "heldout_remote_gpus_per_token": r.remote_gpus_per_token})
    out["redundant"] = {"slots": redundant, "rows": rows}
    return out


def bench_solve(
    part: List[str] = typer.Option(list(PARTS), "--part", help="Parts to run: mixtral, deepseek, scaling, heldout."),
    time_limit: float = typer.Option(120.0, "--time-limit", help="auto's time limit for the DeepSeek-V3 shape."),
    mixtral_time_limit: float = typer.Option(10.0, "--mixtral-time-limit", help="Time limit for the Mixtral shape."),
    scaling_time_limit: float = typer.Option(20.0, "--scaling-time-limit", help="Time limit per scaling shape."),
    heldout_time_limit: float = typer.Option(30.0, "--heldout-time-limit", help="Time limit on the train trace."),
    mixtral_tokens: int = typer.Option(20000, "--mixtral-tokens", help="Tokens of the Mixtral-shaped trace."),
    deepseek_tokens: int = typer.Option(100000, "--deepseek-tokens", help="Tokens of the DeepSeek-V3-shaped trace."),
    deepseek_redundant: int = typer.Option(
        64, "--deepseek-redundant", help="Redundant slots (256 + R must divide by the GPUs: 32 does not for 64)."),
    deepseek_gpus: int = typer.Option(64, "--deepseek-gpus", help="GPUs for the DeepSeek-V3 shape."),
    deepseek_nodes: int = typer.Option(8, "--deepseek-nodes", help="Nodes for the DeepSeek-V3 shape."),
    deepseek_mode: str = typer.Option("ep", "--deepseek-mode", help="Traffic mode for the DeepSeek-V3 shape."),
    scaling_tokens: int = typer.Option(20000, "--scaling-tokens", help="Tokens per scaling trace."),
    train: Path = typer.Option(Path("traces/train.parquet"), "--train", help="Train trace of the held-out part."),
    heldout: Path = typer.Option(Path("traces/heldout.parquet"), "--heldout", help="Held-out trace."),
    redundant: int = typer.Option(4, "--redundant", help="Held-out part: redundant slots for auto vs eplb."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurements as JSON."),
) -> None:
    """Time and quality of auto, cpsat and the baselines, every figure measured in the same run."""
    unknown = [p for p in part if p not in PARTS]
    if unknown:
        raise InputError(f"--part {unknown[0]!r} is not one of {', '.join(PARTS)}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    if "mixtral" in part:
        results["mixtral"] = part_mixtral(mixtral_tokens, mixtral_time_limit, log)
    if "deepseek" in part:
        results["deepseek"] = part_deepseek(deepseek_tokens, time_limit, deepseek_redundant, deepseek_gpus,
                                            deepseek_nodes, deepseek_mode, log)
    if "scaling" in part:
        results["scaling"] = part_scaling(scaling_tokens, scaling_time_limit, log)
    if "heldout" in part:
        results["heldout"] = part_heldout(train, heldout, heldout_time_limit, redundant, log)
    if as_json:
        print_json(results)
        return
    _print(results, console())


def _print(results: dict[str, Any], con) -> None:
    def f(v, fmt="{:.3g}"):
        return "-" if v is None else fmt.format(v)

    if "mixtral" in results:
        t = Table(title="Mixtral shape (32 x 8, top-2): auto and cpsat vs baselines", title_justify="left")
        for c in ("GPUs", "mode", "auto", "auto s", "cpsat", "cpsat s", "auto / best baseline"):
            t.add_column(c)
        for r in results["mixtral"]:
            t.add_row(str(r["gpus"]), r["mode"], r["auto"]["status"], f(r["auto"]["wall_s"], "{:.2f}"),
                      r["cpsat"]["status"], f(r["cpsat"]["wall_s"], "{:.2f}"), f(r["auto_vs_best_baseline"], "{:.3f}"))
        con.print(t)
    if "deepseek" in results:
        d = results["deepseek"]
        t = Table(title=f"DeepSeek-V3 shape {d['shape']}: auto {d['auto']['status']} in {d['auto']['wall_s']:.1f} s, "
                        f"gap {d['auto']['gap']:.1%}", title_justify="left")
        cols = [k for k in d["measured"][0] if k != "solver"]
        t.add_column("solver")
        for c in cols:
            t.add_column(c)
        for m in d["measured"]:
            t.add_row(m["solver"], *[f(m[c], "{:,.4g}") for c in cols])
        con.print(t)
    if "scaling" in results:
        t = Table(title="Scaling of auto", title_justify="left")
        for c in ("L x E x G (nodes)", "mode", "status", "first local optimum s", "total s", "gap", "auto / best baseline"):
            t.add_column(c)
        for r in results["scaling"]:
            t.add_row(f"{r['layers']} x {r['experts']} x {r['gpus']} ({r['nodes']})", r["mode"], r["status"],
                      f(r["first_local_optimum_s"], "{:.1f}"), f(r["wall_s"], "{:.1f}"), f(r["gap"], "{:.1%}"),
                      f(r["auto_vs_best_baseline"], "{:.3f}"))
        con.print(t)
    if "heldout" in results:
        h = results["heldout"]
        for mode in TrafficMode:
            t = Table(title=f"held-out, {mode}, 4 GPUs ({h['source']})", title_justify="left")
            cols = [k for k in h[mode]["heldout"][0] if k != "solver"]
            t.add_column("solver")
            for c in cols:
                t.add_column(c)
            for r in h[mode]["heldout"]:
                t.add_row(r["solver"], *[f(r[c], "{:.4f}") for c in cols])
            con.print(t)
        t = Table(title=f"equal redundancy ({h['redundant']['slots']} extra slots), ep", title_justify="left")
        cols = [k for k in h["redundant"]["rows"][0] if k != "placement"]
        t.add_column("placement")
        for c in cols:
            t.add_column(c)
        for r in h["redundant"]["rows"]:
            t.add_row(r["placement"], *[f(r[c], "{:.4f}") for c in cols])
        con.print(t)


def register(bench_app: typer.Typer) -> None:
    bench_app.command("solve")(bench_solve)
