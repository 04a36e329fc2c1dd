"""``moeplace bench robust``: placements that must hold up when traffic drifts, every figure in one run.

A synthetic drifting trace (``synth --drift``: hot experts and the domain mix change from period to period), cut
into windows of one period each: the first ``--windows`` are the training scenarios, the next two are held out.

1. **Robust solving.** Robust ``auto`` (worst scenario, per token) on the training windows, against ``eplb`` and
   ``auto`` fitted on the training windows summed; each judged on the held-out windows (max/mean GPU load:
   the mean over layers in each held-out window, then the worst and the mean of the windows) and in sample. The
   robust solve's wall time against its ``--time-limit``.
2. **Rebalance.** ``eplb`` fitted on the training windows is serving; the traffic moves to the first held-out
   window. A full ``eplb`` re-solve on it moves most copies; ``rebalance`` with a budget of ``--budget-share`` of
   the slots per layer (balance only: load-only statistics of the new window) recovers what share of the full
   re-solve's balance gain?
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import typer
from rich.table import Table

from placer.cli.common import console, print_json
from placer.core.mode import TrafficMode
from placer.core.topology import Topology


def bench_robust(
    layers: int = typer.Option(58, "--layers", help="MoE layers (DeepSeek-V3: 58)."),
    experts: int = typer.Option(256, "--experts", help="Routed experts per layer."),
    top_k: int = typer.Option(8, "--top-k", help="Experts per token."),
    gpus: int = typer.Option(32, "--gpus", help="GPUs."),
    nodes: int = typer.Option(4, "--nodes", help="Nodes."),
    redundant: int = typer.Option(32, "--redundant", help="Redundant slots per layer."),
    windows: int = typer.Option(8, "--windows", help="Training windows (scenarios); two more are held out."),
    tokens_per_window: int = typer.Option(40000, "--tokens-per-window", help="Tokens per window."),
    drift: float = typer.Option(0.1, "--drift", help="synth --drift: share of each layer's popularity order "
                                                     "re-shuffled from one window to the next."),
    domains: int = typer.Option(4, "--domains", help="synth --domains."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Time limit of each solve."),
    budget_share: float = typer.Option(0.1, "--budget-share", help="Rebalance budget per layer, a share of the slots."),
    seed: int = typer.Option(0, "--seed", help="Seed of the trace and the solvers."),
    traffic: bool = typer.Option(
        False, "--traffic/--load-only", help="Solve on full statistics (traffic and balance, the default weights) "
                                             "or on the windows' expert loads only, as serving stacks record them "
                                             "(the default: balance is what drift breaks)."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurements as JSON."),
) -> None:
    """Robust auto against eplb and auto on summed inputs, held out; rebalance against a full re-solve."""
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    res = run(layers, experts, top_k, gpus, nodes, redundant, windows, tokens_per_window, drift, domains,
              time_limit, budget_share, seed, log, traffic)
    if as_json:
        print_json(res)
        return
    _print(console(), res)


def run(L: int, E: int, K: int, G: int, N: int, R: int, W: int, tokens: int, drift: float, domains: int,
        time_limit: float, budget_share: float, seed: int, log, traffic: bool = False) -> dict[str, Any]:
    # lazy: loads the solvers (numba, OR-Tools); kept out of `moeplace --help`
    from placer.core.cost import evaluate_load
    from placer.core.moves import align, count_moves
    from placer.core.stats.core import compute_stats
    from placer.core.trace.reader import concat_batches
    from placer.synth import SynthConfig, generate
    from solvers import PlacementProblem, SolveOptions, get_solver
    from solvers.rebalance import Budget, rebalance
    from solvers.robust import Scenarios

    # Step 1: the drifting trace, one period per window, counted window by window.
    t0 = time.perf_counter()
    cfg = SynthConfig(layers=L, experts=E, top_k=K, tokens=(W + 2) * tokens, seed=seed, domains=domains, drift=drift,
                      drift_periods=W + 2, seq_len=min(256, tokens), clusters=max(1, min(E // 8, 32)))
    meta, batches = generate(cfg)
    stats = []
    pending, have = [], 0
    for b in batches:
        pending.append(b)
        have += len(b)
        while have >= tokens:
            whole = concat_batches(pending)
            stats.append(compute_stats([whole.select(np.arange(tokens))], L, E, K))
            rest = whole.select(np.arange(tokens, len(whole)))
            pending, have = ([rest] if len(rest) else []), len(rest)
    log(f"trace: {len(stats)} windows of {tokens:,} tokens in {time.perf_counter() - t0:.1f} s")
    topo = Topology(G, N)

    def problem(s, traffic: bool = traffic) -> PlacementProblem:
        return PlacementProblem(s.load_LE, topo, num_redundant=R, top_k=K, mode=TrafficMode.EP,
                                coact_LEE=s.coact_LEE if traffic else None, trans_LEE=s.trans_LEE if traffic else None)

    train, held = stats[:W], stats[W:W + 2]
    scn = Scenarios(tuple(problem(s) for s in train), tuple(f"w{i}" for i in range(W)), (float(tokens),) * W)
    options = SolveOptions(time_limit_s=time_limit, seed=seed)

    # Step 2: robust auto, and eplb / auto on the summed training windows.
    placements, walls = {}, {}
    get_solver("auto").compile(scn.first.mode, robust=True)  # numba's compilation (or cache load) is not solve time
    get_solver("auto").compile(scn.first.mode)
    for name, solve in (("robust auto", lambda: get_solver("auto").solve_scenarios(scn, options)),
                        ("eplb (sum)", lambda: get_solver("eplb")(scn.summed())),
                        ("auto (sum)", lambda: get_solver("auto")(scn.summed(), options))):
        t0 = time.perf_counter()
        placements[name] = solve()
        walls[name] = time.perf_counter() - t0
        log(f"{name}: {walls[name]:.1f} s")

    def balance(p, windows) -> list[float]:
        return [evaluate_load(s.load_LE, p).mean_imbalance for s in windows]

    rows = []
    for name, p in placements.items():
        ins, out = balance(p, train), balance(p, held)
        rows.append({"placement": name, "wall_s": walls[name], "train_worst": max(ins), "train_mean": float(np.mean(ins)),
                     "heldout_worst": max(out), "heldout_mean": float(np.mean(out)),
                     "heldout_worst_layer": max(float(evaluate_load(s.load_LE, p).imbalance_L.max()) for s in held)})

    # Step 3: rebalance from eplb (sum) to the first held-out window, balance only.
    current = placements["eplb (sum)"]
    new = problem(held[0], traffic=False)
    full = get_solver("eplb")(new)
    budget = max(1, int(round(budget_share * (E + R))))
    t0 = time.perf_counter()
    rebal = rebalance([new], current, full, Budget(per_layer=budget), options)
    rebal_wall = time.perf_counter() - t0
    before, after, target = (evaluate_load(held[0].load_LE, p).mean_imbalance for p in (current, rebal, full))
    copies = (E + R) * L
    reb = {"budget_per_layer": budget, "current": before, "full_resolve": target, "rebalanced": after,
           "gain_recovered": (before - after) / (before - target) if before > target else None,
           "full_resolve_moves_as_is": count_moves(current, full).total / copies,
           "full_resolve_moves_matched": count_moves(current, align(current, full)).total / copies,
           "rebalance_moves": count_moves(current, rebal).total / copies, "rebalance_wall_s": rebal_wall}
    log(f"rebalance: {rebal_wall:.1f} s")
    return {"shape": {"layers": L, "experts": E, "top_k": K, "gpus": G, "nodes": N, "redundant": R},
            "windows": {"train": W, "heldout": 2, "tokens": tokens, "drift": drift, "domains": domains},
            "inputs": "full statistics" if traffic else "expert loads only",
            "time_limit_s": time_limit, "solve": rows, "rebalance": reb}


def _print(con, res: dict[str, Any]) -> None:
    sh, w = res["shape"], res["windows"]
    t = Table(title=f"robust placement, {sh['layers']} x {sh['experts']} top-{sh['top_k']} on {sh['gpus']} GPUs in "
                    f"{sh['nodes']} nodes (+{sh['redundant']}), {res['inputs']}: {w['train']} training windows, 2 held "
                    f"out, {w['tokens']:,} tokens each, drift {w['drift']}; max/mean GPU load", title_justify="left")
    for c in ("placement", "solve s", "train worst", "train mean", "held-out worst", "held-out mean",
              "held-out worst layer"):
        t.add_column(c, justify="left" if c == "placement" else "right")
    for r in res["solve"]:
        t.add_row(r["placement"], f"{r['wall_s']:.1f}", f"{r['train_worst']:.4f}", f"{r['train_mean']:.4f}",
                  f"{r['heldout_worst']:.4f}", f"{r['heldout_mean']:.4f}", f"{r['heldout_worst_layer']:.3f}")
    con.print(t)
    r = res["rebalance"]
    rec = "-" if r["gain_recovered"] is None else f"{r['gain_recovered']:.1%}"
    con.print(f"rebalance (budget {r['budget_per_layer']} moves per layer): max/mean {r['current']:.4f} -> "
              f"{r['rebalanced']:.4f} with {r['rebalance_moves']:.1%} of the copies moved ({rec} of the full "
              f"re-solve's gain, {r['full_resolve']:.4f}); the full eplb re-solve moves "
              f"{r['full_resolve_moves_as_is']:.1%} of the copies as written, {r['full_resolve_moves_matched']:.1%} "
              f"with GPUs matched", highlight=False, soft_wrap=True)


def register(bench_app: typer.Typer) -> None:
    bench_app.command("robust")(bench_robust)
