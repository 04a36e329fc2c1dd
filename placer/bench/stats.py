"""``moeplace bench stats``: full routing statistics of a DeepSeek-V3-shaped trace, timed, against a
straightforward pandas group-by of the same counts measured in the same run.

What is measured:

1. **fast path, whole trace**: ``stats_from_traces`` over the Parquet file (reading included) in a child
   process, so that its peak RSS is its own; the numba kernels are loaded (or compiled) first and timed apart.
2. **fast path, in memory**: ``FastCounter`` on the first ``--pandas-tokens`` tokens, already in memory.
3. **pandas**: the same counts of the same in-memory tokens with ``DataFrame.groupby`` / ``merge`` (a long
   frame of (token, layer, rank, expert), self-joined on (token, layer) for co-activation and on
   (token, layer + 1) for transitions), in chunks of ``--pandas-chunk`` tokens to bound its memory.

Speed is routing entries (token, layer, rank) per second; the ratio compares 2 and 3 (same data, same
process) and, more conservatively, 1 (which also reads the file) and 3. The counts of 2 and 3 are compared
for equality.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from placer.cli.common import console, kv_table, print_json
from placer.core.errors import MoeplaceError, InputError
from placer.progress import progress_bar


def pandas_counts(experts_TLK: np.ndarray, present_TL: np.ndarray | None, num_experts: int,
                  chunk: int = 1000) -> dict[str, np.ndarray]:
    """The counts of ``RoutingStats`` with pandas group-bys (the baseline; exact, slow)."""
    # lazy: pandas is slow to import; only this baseline uses it
    import pandas as pd

    T, L, K = experts_TLK.shape
    E = num_experts
    out = {"load_LE": np.zeros((L, E), np.int64), "load1_LE": np.zeros((L, E), np.int64),
           "coact_LEE": np.zeros((L, E, E), np.int64), "trans_LEE": np.zeros((max(L - 1, 0), E, E), np.int64),
           "trans1_LEE": np.zeros((max(L - 1, 0), E, E), np.int64), "tokens_L": np.zeros(L, np.int64),
           "pair_tokens_L": np.zeros(max(L - 1, 0), np.int64)}

    def add(name: str, counts: "pd.Series") -> None:
        idx = tuple(np.asarray(counts.index.get_level_values(i)) for i in range(counts.index.nlevels))
        np.add.at(out[name], idx, counts.to_numpy())

    for start in range(0, T, chunk):
        ex = experts_TLK[start:start + chunk]
        n = ex.shape[0]
        df = pd.DataFrame({
            "token": np.repeat(np.arange(n), L * K),
            "layer": np.tile(np.repeat(np.arange(L), K), n),
            "rank": np.tile(np.arange(K), n * L),
            "expert": ex.reshape(-1).astype(np.int64),
        })
        if present_TL is not None:
            df = df[np.repeat(present_TL[start:start + chunk].reshape(-1), K)]
        top1 = df[df["rank"] == 0]
        add("load_LE", df.groupby(["layer", "expert"]).size())
        add("load1_LE", top1.groupby(["layer", "expert"]).size())
        out["tokens_L"] += top1.groupby("layer").size().reindex(range(L), fill_value=0).to_numpy()
        pairs = df.merge(df, on=["token", "layer"])
        add("coact_LEE", pairs.groupby(["layer", "expert_x", "expert_y"]).size())
        if L > 1:
            trans = df.merge(df.assign(layer=df["layer"] - 1), on=["token", "layer"])
            add("trans_LEE", trans.groupby(["layer", "expert_x", "expert_y"]).size())
            t1 = trans[(trans["rank_x"] == 0) & (trans["rank_y"] == 0)]
            add("trans1_LEE", t1.groupby(["layer", "expert_x", "expert_y"]).size())
            out["pair_tokens_L"] += t1.groupby("layer").size().reindex(range(L - 1), fill_value=0).to_numpy()
    return out


def _child(trace: str) -> None:
    """Run in a fresh process: time full statistics of ``trace``; print JSON on stdout."""
    # lazy: the resource module exists on Unix only
    import resource

    os.environ["MOEPLACE_QUIET"] = "1"
    t0 = time.perf_counter()
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.stats.core import FastCounter
    from placer.core.stats.stream import stats_from_traces
    from placer.core.trace.reader import TraceReader

    meta = TraceReader(trace).meta
    warm = FastCounter(*meta.shape)
    warm.add(np.zeros((1, meta.num_layers, meta.top_k), dtype=meta.id_dtype) + np.arange(meta.top_k, dtype=meta.id_dtype))
    t1 = time.perf_counter()
    s = stats_from_traces(trace, sample_tokens=0)
    t2 = time.perf_counter()
    print(json.dumps({
        "setup_s": t1 - t0, "wall_s": t2 - t1, "tokens": int(s.tokens),
        "entries": int(s.tokens_L.sum()) * s.top_k, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def _run_child(trace: Path) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, "-c", "import sys; from placer.bench.stats import _child; _child(sys.argv[1])",
                           str(trace)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MoeplaceError(f"the timed statistics process failed (exit {proc.returncode}): {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_synth_trace(path: Path, layers: int, experts: int, top_k: int, tokens: int, clusters: int,
                      seed: int) -> float:
    """Write a synthetic trace of this shape at ``path``; return the seconds it took."""
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.synth import SynthConfig, generate
    from placer.core.trace.writer import TraceWriter

    try:
        cfg = SynthConfig(layers=layers, experts=experts, top_k=top_k, tokens=tokens, clusters=clusters, domains=3,
                          seed=seed)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    t0 = time.perf_counter()
    meta, batches = generate(cfg)
    with TraceWriter(path, meta, with_domain=True) as w, progress_bar(tokens, "synth", unit="tok") as advance:
        for b in batches:
            w.write(b)
            advance(len(b))
    return time.perf_counter() - t0


def bench_stats(
    trace: Optional[Path] = typer.Option(None, "--trace", help="Time this trace instead of synthesising one."),
    tokens: int = typer.Option(1_000_000, "--tokens", "-T", help="Tokens of the synthetic trace."),
    layers: int = typer.Option(58, "--layers", "-L", help="MoE layers of the synthetic trace (DeepSeek-V3: 58)."),
    experts: int = typer.Option(256, "--experts", "-E", help="Experts per layer (DeepSeek-V3: 256)."),
    top_k: int = typer.Option(8, "--top-k", "-K", help="Experts per token (DeepSeek-V3: 8)."),
    clusters: int = typer.Option(8, "--clusters", help="Planted clusters of the synthetic trace."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic trace."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="Folder for the synthetic trace [default: a temporary folder, removed afterwards]."),
    pandas_tokens: int = typer.Option(8192, "--pandas-tokens", help="Tokens (the trace's first) counted by both "
                                      "pandas and the fast path in memory."),
    pandas_chunk: int = typer.Option(1000, "--pandas-chunk", help="Tokens per pandas group-by (bounds its memory)."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurements as JSON."),
) -> None:
    """Time full statistics (load, co-activation, transitions) of a trace, against pandas on the same data.

    Without --trace, synthesises a DeepSeek-V3-shaped trace (58 layers, 256 experts, top-8) of --tokens tokens
    into a temporary folder first (1M tokens: about 1.5 minutes and 1.3 GB of disk on 2 cores; not part of
    the timing). Targets: 1M tokens in at most 60 s, peak memory under 3 GB, at least 10x pandas.
    """
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.stats.core import FastCounter
    from placer.core.trace.reader import TraceReader, concat_batches

    if pandas_tokens < 1 or pandas_chunk < 1:
        raise InputError(f"--pandas-tokens ({pandas_tokens}) and --pandas-chunk ({pandas_chunk}) must be positive")
    tmp = None
    result: dict[str, Any] = {}
    try:
        # Step 1: the trace.
        if trace is None:
            folder = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="moeplace-bench-"))
            tmp = folder if workdir is None else None
            folder.mkdir(parents=True, exist_ok=True)
            trace = folder / f"bench-{layers}x{experts}-top{top_k}-{tokens}.parquet"
            if not trace.exists():
                result["synth_s"] = round(write_synth_trace(trace, layers, experts, top_k, tokens, clusters, seed), 2)
        reader = TraceReader(trace)
        L, E, K = reader.meta.shape
        result.update(trace=str(trace), shape=[L, E, K], trace_bytes=trace.stat().st_size)

        # Step 2: full statistics of the whole trace, in a child process (its own peak RSS).
        full = _run_child(trace)
        result["fast_trace"] = {**{k: round(v, 3) if isinstance(v, float) else v for k, v in full.items()},
                                "entries_per_s": round(full["entries"] / full["wall_s"])}

        # Step 3: the same in-memory sample, counted by the fast path and by pandas.
        parts, n = [], 0
        for b in reader.iter_batches(batch_size=min(pandas_tokens, 65536), fields=("experts", "present")):
            parts.append(b)
            n += len(b)
            if n >= pandas_tokens:
                break
        sample = concat_batches(parts)
        ex, present = sample.experts_TLK[:pandas_tokens], None
        if sample.present_TL is not None:
            present = sample.present_TL[:pandas_tokens]
        entries = int(K * (present.sum() if present is not None else ex.shape[0] * L))
        c = FastCounter(L, E, K)
        c.add(ex[:1], None if present is None else present[:1])  # load the kernels before timing
        c = FastCounter(L, E, K)
        t0 = time.perf_counter()
        c.add(ex, present)
        fast = c.result()
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        pd_counts = pandas_counts(ex, present, E, chunk=pandas_chunk)
        t_pd = time.perf_counter() - t0
        equal = all(np.array_equal(v, getattr(fast, k)) for k, v in pd_counts.items())
        result["sample_tokens"] = int(ex.shape[0])
        result["fast_memory"] = {"wall_s": round(t_fast, 4), "entries": entries, "entries_per_s": round(entries / t_fast)}
        result["pandas"] = {"wall_s": round(t_pd, 3), "entries": entries, "entries_per_s": round(entries / t_pd)}
        result["counts_equal"] = bool(equal)
        result["speedup_same_data"] = round(t_pd / t_fast, 1)
        result["speedup_whole_trace_vs_pandas"] = round(result["fast_trace"]["entries_per_s"] / result["pandas"]["entries_per_s"], 1)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if not equal:
        raise MoeplaceError("pandas and the fast path counted different statistics on the same tokens")
    if as_json:
        print_json(result)
        return
    f, pdm, fm = result["fast_trace"], result["pandas"], result["fast_memory"]
    rows = [
        ("trace", f"{result['trace']} ({result['trace_bytes'] / 1e9:.2f} GB)" + (
            f", synthesised in {result['synth_s']:.0f} s (not timed)" if "synth_s" in result else "")),
        ("shape (L, E, K)", f"{L} x {E} x top-{K}"),
        ("fast path, whole trace", f"{f['tokens']:,} tokens in {f['wall_s']:.1f} s (reading included; kernels "
                                   f"loaded in {f['setup_s']:.1f} s before), {f['entries_per_s'] / 1e6:.1f}M entries/s, "
                                   f"peak RSS {f['peak_rss_mb']:,.0f} MB"),
        ("fast path, in memory", f"{result['sample_tokens']:,} tokens in {fm['wall_s']:.3f} s, "
                                 f"{fm['entries_per_s'] / 1e6:.1f}M entries/s"),
        ("pandas group-by", f"same {result['sample_tokens']:,} tokens in {pdm['wall_s']:.1f} s, "
                            f"{pdm['entries_per_s'] / 1e6:.2f}M entries/s"),
        ("counts equal", "yes" if equal else "NO"),
        ("speed-up, same data", f"{result['speedup_same_data']:.0f}x"),
        ("speed-up, whole trace vs pandas", f"{result['speedup_whole_trace_vs_pandas']:.0f}x"),
    ]
    console().print(kv_table("moeplace bench stats", rows))


def register(bench_app: typer.Typer) -> None:
    bench_app.command("stats")(bench_stats)
