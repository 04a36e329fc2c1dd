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

The large solves (Kimi-K2 and DeepSeek-V3 shapes on hundreds of GPUs) are to be added as a ``solve`` part.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

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
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds (user + system, every thread) this process has used."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _warm_kernels(L: int, E: int, K: int) -> None:
    """Load (or compile) the counting kernels in this process, so that timing starts with them ready."""
    import numpy as np

    from placer.core.stats.core import FastCounter
    from placer.core.trace.schema import expert_dtype

    FastCounter(L, E, K).add(np.arange(K, dtype=expert_dtype(E))[None, None, :].repeat(L, axis=1))


# -- the single-process path, in a child process ----------------------------------------------------------

def _single_child(paths: list[str]) -> None:
    """Run in a fresh process (``NUMBA_NUM_THREADS`` set by the parent): time ``stats_from_traces``."""
    os.environ["MOEPLACE_QUIET"] = "1"
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
    import dataclasses

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
    from placer.bench.stats import _synth

    per = o.tokens // o.shards
    paths, took = [], 0.0
    for i in range(o.shards):
        p = o.workdir / f"scale-{o.layers}x{o.experts}-top{o.top_k}-{per}-seed{o.seed + i}.parquet"
        if not p.exists():
            took += _synth(p, o.layers, o.experts, o.top_k, per, o.clusters, o.seed + i)
        paths.append(p)
    return paths, took


def part_stats(o: ScaleOptions) -> dict[str, Any]:
    if o.shards < 1 or o.tokens < o.shards:
        raise InputError(f"--tokens {o.tokens} in --shards {o.shards}: give at least one token per shard")
    if o.workers < 2:
        raise InputError(f"--workers {o.workers}: compare at least 2 workers against 1")
    from placer.scale import require_engine

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


PARTS: dict[str, Callable[[ScaleOptions], dict[str, Any]]] = {"stats": part_stats}
ROWS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str]]]] = {"stats": rows_stats}


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
    """
    import shutil

    from placer.cli.common import console, kv_table, print_json

    chosen = list(dict.fromkeys(part or PARTS))
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise InputError(f"--part {unknown[0]!r}: choose from {', '.join(PARTS)}")
    tmp = None if workdir is not None else Path(tempfile.mkdtemp(prefix="moeplace-bench-scale-"))
    folder = workdir if workdir is not None else tmp
    try:
        folder.mkdir(parents=True, exist_ok=True)
        o = ScaleOptions(workdir=folder, tokens=tokens, shards=shards, workers=workers, layers=layers,
                         experts=experts, top_k=top_k, clusters=clusters, seed=seed)
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
