"""``moeplace bench scale``: moeplace at fleet scale, measured against baselines of the same run.

Parts (``--part``, all by default); each is a function ``part(options) -> dict`` in ``PARTS`` with a
``ROWS`` entry that turns its result into table rows, so a new part is a function and two entries:

- ``stats``: statistics of a DeepSeek-V3-shaped trace (58 MoE layers x 256 experts, top-8; 4M tokens in 8
  shard files by default) counted on Dask (``moeplace stats --engine dask``) with 1 and with ``--workers``
  local workers, against the single-process path (``stats_from_traces``) in a child process with one
  kernel thread and with all cores. Every run's statistics are checked equal (a digest of every count
  array, split and sample token); the ratios compare wall times of the same run. Beside wall time, each
  run reports the CPU seconds its processes used (workers and client) and the load average before and
  after: on a shared machine the wall time measures the neighbours too, CPU time much less. The synthetic shards are
  written first (not timed) and kept in ``--workdir`` if given.

- ``solve``: ``moeplace solve``'s default solver (``auto``, ep mode) on the two largest shapes of issue 14:
  Kimi-K2 (60 MoE layers x 384 experts, top-8) on 256 GPUs in 32 nodes with 128 redundant slots, and
  DeepSeek-V3 (58 x 256, top-8) on 320 GPUs in 40 nodes with 64 redundant slots (one slot per GPU), each
  from a synthetic trace (``--solve-tokens`` tokens; written first, not timed, kept in ``--workdir``). A child
  process per shape reads the trace as ``moeplace solve`` does (timed apart: the time limit does not cover
  reading inputs), solves it with ``eplb`` (the reference), then with ``auto`` at ``--time-limit`` with one
  thread and with ``--threads``: wall time against the limit, peak memory, objective against eplb's, bound,
  gap, and the ratio of the two runs' layer-search phases (the phase the threads share) with a check that
  both gave the same placement. Where the wall clock cut both searches (the budget is larger than the
  machine does in the limit), the phases last about as long and the ratio that counts is the work done per
  second of layer search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import typer

from placer.bench.stats import write_synth_trace
from placer.cli.common import console, kv_table, print_json
from placer.core.errors import InputError, MoeplaceError


@dataclass(frozen=True)
class ScaleOptions:
    workdir: Path
    tokens: int
    shards: int
    workers: int
    layers: int
    experts: int
    top_k: int
    clusters: int
    seed: int
    solve_tokens: int = 100_000
    time_limit: float = 90.0
    threads: int = 2


# -- what every run is checked by ---------------------------------------------------------------------------

def stats_digest(s) -> str:
    """SHA-256 of everything the statistics hold: metadata, every count array (type and bytes), the splits
    in order and the token sample. Equal digests: equal statistics, bit for bit."""
    h = hashlib.sha256()

    def add(st) -> None:
        h.update(json.dumps([st.shape, st.tokens, st.model_name, list(st.moe_layer_indices), list(st.sources),
                             st.extra], sort_keys=True, default=str).encode())
        for name, a in st.counts().items():
            h.update(f"{name}:{a.dtype}:{a.shape}".encode())
            h.update(a.tobytes())
        if st.sample is not None:
            h.update(st.sample.experts_TLK.tobytes())
            h.update(st.sample.present_or_ones().tobytes())
        for name, sub in st.splits.items():
            h.update(name.encode())
            add(sub)

    add(s)
    return h.hexdigest()


def _peak_rss_mb() -> float:
    # lazy: the resource module exists on Unix only
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds (user + system, every thread) this process has used."""
    # lazy: the resource module exists on Unix only
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _warm_kernels(L: int, E: int, K: int) -> None:
    """Load (or compile) the counting kernels in this process, so that timing starts with them ready."""
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.stats.core import FastCounter
    from placer.core.trace.schema import expert_dtype

    FastCounter(L, E, K).add(np.arange(K, dtype=expert_dtype(E))[None, None, :].repeat(L, axis=1))


# -- the single-process path, in a child process ----------------------------------------------------------

def _single_child(paths: list[str]) -> None:
    """Run in a fresh process (``NUMBA_NUM_THREADS`` set by the parent): time ``stats_from_traces``."""
    os.environ["MOEPLACE_QUIET"] = "1"
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.stats.stream import stats_from_traces
    from placer.core.trace.reader import TraceDataset

    _warm_kernels(*TraceDataset(paths).meta.shape)
    load, cpu, t0 = os.getloadavg()[0], _cpu_s(), time.perf_counter()
    s = stats_from_traces(paths)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "load_before": load, "load_after": os.getloadavg()[0],
                      "digest": stats_digest(s), "peak_rss_mb": _peak_rss_mb()}))


def _single(paths: list[Path], threads: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, "-c", "import sys; from placer.bench.scale import _single_child; "
                           "_single_child(sys.argv[1:])", *map(str, paths)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MoeplaceError(f"the timed single-process statistics failed (exit {proc.returncode}): {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- on Dask ------------------------------------------------------------------------------------------------

def _on_dask(paths: list[Path], workers: int, kernel_threads: int) -> dict[str, Any]:
    """Start a local cluster of ``workers`` (timed apart), load the kernels on every worker, then time
    ``moeplace stats --engine dask``'s counting and reduction of every shard (one per file)."""
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.scale import plan
    from placer.scale.dask_runner import check_workers, connect, count_on_cluster

    ds, shards, job = plan(paths, shard_tokens=None)
    t0 = time.perf_counter()
    with connect(None, workers) as (client, _):
        client.run(_warm_kernels, *ds.meta.shape)
        check_workers(client, shards[0].path)
        start_s = time.perf_counter() - t0
        load, cpu = os.getloadavg()[0], sum(client.run(_cpu_s).values()) + _cpu_s()
        t1 = time.perf_counter()
        builder = count_on_cluster(client, shards, dataclasses.replace(job, threads=kernel_threads))
        s = builder.result(sources=[str(p) for p in ds.paths])
        wall = time.perf_counter() - t1
        cpu = sum(client.run(_cpu_s).values()) + _cpu_s() - cpu
        rss = max(client.run(_peak_rss_mb).values())
    return {"workers": workers, "kernel_threads_per_worker": kernel_threads, "start_s": start_s, "wall_s": wall,
            "cpu_s": cpu, "load_before": load, "load_after": os.getloadavg()[0], "digest": stats_digest(s),
            "worker_peak_rss_mb": rss, "client_peak_rss_mb": _peak_rss_mb()}


def _synth_shards(o: ScaleOptions) -> tuple[list[Path], float]:
    """``o.shards`` trace files of ``o.tokens / o.shards`` tokens each (seeds seed, seed+1, ...), written
    unless already in the work folder."""
    per = o.tokens // o.shards
    paths, took = [], 0.0
    for i in range(o.shards):
        p = o.workdir / f"scale-{o.layers}x{o.experts}-top{o.top_k}-{per}-seed{o.seed + i}.parquet"
        if not p.exists():
            took += write_synth_trace(p, o.layers, o.experts, o.top_k, per, o.clusters, o.seed + i)
        paths.append(p)
    return paths, took


def part_stats(o: ScaleOptions) -> dict[str, Any]:
    if o.shards < 1 or o.tokens < o.shards:
        raise InputError(f"--tokens {o.tokens} in --shards {o.shards}: give at least one token per shard")
    if o.workers < 2:
        raise InputError(f"--workers {o.workers}: compare at least 2 workers against 1")
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.scale import require_engine
    from placer.scale.dask_runner import require_workers

    require_workers(o.workers)  # before the shards are made

    require_engine("dask")
    cores = os.cpu_count() or 1
    paths, synth_s = _synth_shards(o)
    tokens = o.tokens // o.shards * o.shards
    entries = tokens * o.layers * o.top_k
    runs = {
        "single_1_thread": _single(paths, 1),
        f"single_{cores}_threads": _single(paths, cores),
        "dask_1_worker": _on_dask(paths, 1, 1),
        f"dask_{o.workers}_workers": _on_dask(paths, o.workers, 1),
    }
    for r in runs.values():
        r["entries_per_s"] = round(entries / r["wall_s"])
        r["entries_per_cpu_s"] = round(entries / r["cpu_s"])
    digests = {r.pop("digest") for r in runs.values()}
    if len(digests) != 1:
        raise MoeplaceError("the distributed and single-process statistics differ: " + ", ".join(sorted(digests)))
    w = runs[f"dask_{o.workers}_workers"]["wall_s"]
    return {
        "shape": [o.layers, o.experts, o.top_k], "tokens": tokens, "shards": o.shards, "entries": entries,
        "cores": cores, "synth_s": round(synth_s, 1), "files": [str(p) for p in paths],
        "trace_bytes": sum(p.stat().st_size for p in paths), "equal": True,
        "runs": {k: {n: round(v, 3) if isinstance(v, float) else v for n, v in r.items()} for k, r in runs.items()},
        "ratios": {
            f"{o.workers}_workers_vs_1_worker": round(runs["dask_1_worker"]["wall_s"] / w, 2),
            f"{o.workers}_workers_vs_single_{cores}_threads": round(runs[f"single_{cores}_threads"]["wall_s"] / w, 2),
            f"{o.workers}_workers_vs_single_1_thread": round(runs["single_1_thread"]["wall_s"] / w, 2),
            "1_worker_vs_single_1_thread": round(runs["single_1_thread"]["wall_s"] / runs["dask_1_worker"]["wall_s"], 2),
        },
    }


def rows_stats(r: dict[str, Any]) -> list[tuple[str, str]]:
    L, E, K = r["shape"]
    rows = [("stats: trace", f"{L} x {E} x top-{K}, {r['tokens']:,} tokens in {r['shards']} files "
                             f"({r['trace_bytes'] / 1e9:.2f} GB; {r['entries'] / 1e6:,.0f}M routing entries)"
                             + (f", synthesised in {r['synth_s']:.0f} s (not timed)" if r["synth_s"] else ""))]
    for name, run in r["runs"].items():
        what = (f"single process, {name.split('_')[1]} kernel thread(s)" if name.startswith("single")
                else f"dask, {run['workers']} worker(s) x {run['kernel_threads_per_worker']} kernel thread "
                     f"(cluster start {run['start_s']:.1f} s, not timed)")
        rss = run.get("peak_rss_mb", run.get("worker_peak_rss_mb"))
        rows.append((f"stats: {what}", f"{run['wall_s']:.1f} s, {run['entries_per_s'] / 1e6:.1f}M entries/s "
                                       f"({run['entries_per_cpu_s'] / 1e6:.1f}M per CPU-second), peak RSS {rss:,.0f} MB"
                                       + (" per worker" if "workers" in run else "")
                                       + f", load average {run['load_before']:.1f} -> {run['load_after']:.1f}"))
    rows.append(("stats: equal to the single process", "yes (every count, split and sample token)"))
    rows += [(f"stats: ratio {k.replace('_', ' ')}", f"{v:.2f}x") for k, v in r["ratios"].items()]
    return rows


# -- the large solves ----------------------------------------------------------------------------------------

# name: (layers, experts, top-k, GPUs, nodes, redundant slots)
SOLVE_SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "kimi-k2": (60, 384, 8, 256, 32, 128),
    "deepseek-v3": (58, 256, 8, 320, 40, 64),
}


def _solve_child(args: str) -> None:
    """Run in a fresh process: read one trace as ``moeplace solve`` does, then time eplb and auto (1 and N
    threads) on it; print one JSON line."""
    os.environ["MOEPLACE_QUIET"] = "1"
    # lazy: resource exists on Unix only; the rest loads the solvers (numba, OR-Tools), kept out of `moeplace --help`
    import resource

    from placer.inputs import problem_from_stats, resolve_topology
    from placer.scenarios import read_scenarios
    from solvers import SolveOptions, get_solver
    from solvers.assignment import judge

    a = json.loads(args)
    t0 = time.perf_counter()
    read = read_scenarios([Path(a["trace"])], with_paths=True)
    problem = problem_from_stats(read[0].stats, resolve_topology(a["gpus"], a["nodes"], None), a["redundant"],
                                 "ep", paths=read[0].paths)
    out: dict[str, Any] = {"read_s": time.perf_counter() - t0, "load_before": os.getloadavg()[0]}
    eplb = get_solver("eplb")(problem, SolveOptions())
    out["eplb_objective"] = float(judge(problem, SolveOptions(params={"max_imbalance": 0}), eplb)[1].value)
    get_solver("auto").compile("ep")  # numba's compilation (or cache load) is not solve time
    for threads in (1, a["threads"]):
        t1 = time.perf_counter()
        p = get_solver("auto")(problem, SolveOptions(time_limit_s=a["time_limit"], seed=0, threads=threads))
        r = p.report
        phases = r.extra["phase_end_s"]
        out[f"auto_{threads}"] = {
            "wall_s": time.perf_counter() - t1, "status": str(r.status.value), "objective": r.objective_value,
            "bound": r.bound, "gap": r.gap, "search_s": phases["by_layer"] - phases["start"],
            "start_s": phases["start"], "stopped_by_wall_clock": r.extra["stopped_by_wall_clock"],
            "layers_stopped_by_wall_clock": r.extra["by_layer"]["layers_stopped_by_wall_clock"],
            "work": r.extra["work"], "placement_sha256": hashlib.sha256(np.ascontiguousarray(p.phy2log_LP)).hexdigest(),
        }
    out["load_after"] = os.getloadavg()[0]
    out["peak_rss_mb"] = _peak_rss_mb()
    out["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(out))


def part_solve(o: ScaleOptions) -> dict[str, Any]:
    if o.time_limit <= 0 or o.solve_tokens < 1:
        raise InputError(f"--time-limit {o.time_limit} and --solve-tokens {o.solve_tokens} must be positive")
    if o.threads < 2:
        raise InputError(f"--threads {o.threads}: compare at least 2 threads against 1")

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    shapes = {}
    for name, (L, E, K, G, N, R) in SOLVE_SHAPES.items():
        trace = o.workdir / f"solve-{name}-{L}x{E}-top{K}-{o.solve_tokens}-seed{o.seed}.parquet"
        synth_s = 0.0 if trace.exists() else write_synth_trace(trace, L, E, K, o.solve_tokens, o.clusters, o.seed)
        args = json.dumps({"trace": str(trace), "gpus": G, "nodes": N, "redundant": R, "time_limit": o.time_limit,
                           "threads": o.threads})
        proc = subprocess.run([sys.executable, "-c", "import sys; from placer.bench.scale import _solve_child; "
                               "_solve_child(sys.argv[1])", args], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise MoeplaceError(f"the timed solve of the {name} shape failed (exit {proc.returncode}): {last}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        one, many = r["auto_1"], r[f"auto_{o.threads}"]
        r.update(shape=[L, E, K], gpus=G, nodes=N, redundant=R, tokens=o.solve_tokens, synth_s=synth_s,
                 time_limit=o.time_limit, threads=o.threads,
                 same_placement=one["placement_sha256"] == many["placement_sha256"],
                 search_ratio=one["search_s"] / max(many["search_s"], 1e-9),
                 work_rate_ratio=(many["work"] / max(many["search_s"], 1e-9)) / max(one["work"] / max(one["search_s"], 1e-9), 1e-9),
                 wall_ratio=one["wall_s"] / max(many["wall_s"], 1e-9))
        shapes[name] = r
    return {"cores": os.cpu_count() or 1, "shapes": shapes}


def rows_solve(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for name, s in r["shapes"].items():
        L, E, K = s["shape"]
        rows.append((f"solve {name}: shape", f"{L} x {E} x top-{K} on {s['gpus']} GPUs in {s['nodes']} nodes, "
                                             f"{s['redundant']} redundant slots; {s['tokens']:,} tokens, read in "
                                             f"{s['read_s']:.1f} s (not in the limit)"))
        rows.append((f"solve {name}: eplb objective", f"{s['eplb_objective']:,.0f}"))
        for key in ("auto_1", f"auto_{s['threads']}"):
            a = s[key]
            threads = key.split("_")[1]
            gap = "-" if a["gap"] is None else f"{100 * a['gap']:.1f} %"
            cut = f", wall clock cut {a['layers_stopped_by_wall_clock']} layers" if a["stopped_by_wall_clock"] else ""
            rows.append((f"solve {name}: auto, {threads} thread(s)",
                         f"{a['wall_s']:.1f} s of a {s['time_limit']:g} s limit ({a['status']}{cut}); objective "
                         f"{a['objective']:,.0f} ({100 * (1 - a['objective'] / s['eplb_objective']):.1f} % below "
                         f"eplb), bound {a['bound']:,.0f}, gap {gap}"))
        rows.append((f"solve {name}: peak memory", f"{s['peak_rss_mb']:,.0f} MB (workers {s['workers_peak_rss_mb']:,.0f} MB each)"))
        rows.append((f"solve {name}: --threads {s['threads']} vs 1",
                     f"layer search {s['search_ratio']:.2f}x, whole solve {s['wall_ratio']:.2f}x, local-search work per "
                     f"second of layer search {s['work_rate_ratio']:.2f}x; same placement: "
                     f"{'yes' if s['same_placement'] else 'no (the wall clock cut the searches differently)'}; "
                     f"load average {s['load_before']:.1f} -> {s['load_after']:.1f}"))
    return rows


PARTS: dict[str, Callable[[ScaleOptions], dict[str, Any]]] = {"stats": part_stats, "solve": part_solve}
ROWS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str]]]] = {"stats": rows_stats, "solve": rows_solve}


def bench_scale(
    part: Optional[List[str]] = typer.Option(None, "--part", help=f"Parts to run: {', '.join(PARTS)} (default: all)."),
    tokens: int = typer.Option(4_000_000, "--tokens", "-T", help="stats: tokens of the synthetic trace, in all."),
    shards: int = typer.Option(8, "--shards", help="stats: shard files the tokens are written in."),
    workers: int = typer.Option(2, "--workers", help="stats: local Dask workers compared against one."),
    layers: int = typer.Option(58, "--layers", "-L", help="stats: MoE layers (DeepSeek-V3: 58)."),
    experts: int = typer.Option(256, "--experts", "-E", help="stats: experts per layer (DeepSeek-V3: 256)."),
    top_k: int = typer.Option(8, "--top-k", "-K", help="stats: experts per token (DeepSeek-V3: 8)."),
    clusters: int = typer.Option(8, "--clusters", help="stats: planted clusters of the synthetic trace."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first synthetic shard (the next ones: seed + 1, ...)."),
    solve_tokens: int = typer.Option(100_000, "--solve-tokens", help="solve: tokens of each shape's synthetic trace."),
    time_limit: float = typer.Option(90.0, "--time-limit", help="solve: auto's --time-limit in seconds."),
    threads: int = typer.Option(2, "--threads", help="solve: auto's --threads compared against one."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="Folder for the synthetic traces, kept for the next run (default: a temporary "
        "folder, removed afterwards)."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurements as JSON."),
) -> None:
    """Time moeplace at fleet scale against baselines of the same run (ratios; see BENCHMARKS.md).

    The stats part: statistics of a DeepSeek-V3-shaped trace (4M tokens in 8 shard files: 6-10 minutes
    and 5 GB of disk to synthesise on 2 cores, not timed) counted on Dask with 1 and with --workers local
    workers (one kernel thread each), against the single-process path with one kernel thread and with every
    core; every run's statistics must be equal bit for bit. Small runs: --tokens 4000 -L 4 -E 16 -K 2.

    The solve part: auto on the Kimi-K2 and DeepSeek-V3 shapes (hundreds of GPUs) at --time-limit, with 1 and
    --threads threads, against eplb (about 4 x --time-limit per shape, plus writing the traces).
    """
    chosen = list(dict.fromkeys(part or PARTS))
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise InputError(f"--part {unknown[0]!r}: choose from {', '.join(PARTS)}")
    tmp = None if workdir is not None else Path(tempfile.mkdtemp(prefix="moeplace-bench-scale-"))
    folder = workdir if workdir is not None else tmp
    try:
        folder.mkdir(parents=True, exist_ok=True)
        o = ScaleOptions(workdir=folder, tokens=tokens, shards=shards, workers=workers, layers=layers,
                         experts=experts, top_k=top_k, clusters=clusters, seed=seed, solve_tokens=solve_tokens,
                         time_limit=time_limit, threads=threads)
        result = {name: PARTS[name](o) for name in chosen}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if as_json:
        print_json(result)
        return
    console().print(kv_table("moeplace bench scale", [row for name in chosen for row in ROWS[name](result[name])]))


def register(bench_app: typer.Typer) -> None:
    bench_app.command("scale")(bench_scale)
