"""Where solve and evaluate get their inputs: routing statistics (from traces, a stats file or a load matrix)
and the topology (from ``--gpus/--nodes``, a topology file or a placement).

``read_statistics`` is the one place that turns the command line's input options into ``RoutingStats``;
the statistics module's own loaders plug in here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from placer.errors import UsageError
from placer.fileio import require_file
from placer.stats import RoutingStats, compute_stats
from placer.topology import Topology, preset


ShapeCheck = Callable[[int, int], None]


def stats_from_traces(paths: Sequence[str | os.PathLike], check: ShapeCheck | None = None) -> RoutingStats:
    """Exact statistics of one or more traces read together (a progress bar on stderr). ``check(L, E)``
    runs before the pass over the tokens."""
    from placer.progress import progress_bar
    from placer.trace.reader import TraceDataset

    ds = TraceDataset(list(paths))
    L, E, K = ds.meta.shape
    if check is not None:
        check(L, E)

    def batches():
        with progress_bar(ds.num_tokens, "statistics", unit="tok") as advance:
            for b in ds.iter_batches(fields=("experts", "present")):
                advance(len(b))
                yield b

    return compute_stats(batches(), L, E, K, model_name=ds.meta.model_name,
                         moe_layer_indices=ds.meta.moe_layer_indices, sources=tuple(str(p) for p in ds.paths))


def load_matrix(path: str | os.PathLike) -> RoutingStats:
    """Load-only statistics from a ``.npy`` [layers, experts] matrix of expert loads."""
    p = require_file(path, "load file")
    if p.suffix != ".npy":
        raise UsageError(f"{p}: load matrices are read from .npy files ([layers, experts]), got '{p.suffix}'")
    try:
        load = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{p}: not a readable .npy file ({str(exc).splitlines()[0][:120]})") from None
    if load.ndim != 2 or load.size == 0:
        raise UsageError(f"{p}: expected a [layers, experts] load matrix, got shape {list(load.shape)}")
    if not np.issubdtype(load.dtype, np.number) or not np.isfinite(load).all() or (load < 0).any():
        raise UsageError(f"{p}: loads must be finite and non-negative numbers")
    L, E = load.shape
    return RoutingStats(num_layers=L, num_experts=E, top_k=0, load_LE=load.astype(np.float64), sources=(str(p),))


def load_stats_file(path: str | os.PathLike) -> RoutingStats:
    """Statistics written by ``moeplace stats`` (read by the statistics module)."""
    p = require_file(path, "stats file")
    try:
        from placer.stats import load_stats  # type: ignore[attr-defined]
    except ImportError:
        raise UsageError(f"{p}: this build cannot read stats files yet (no placer.stats.load_stats); "
                         f"give the traces, or a load matrix with --load") from None
    return load_stats(p)


def read_statistics(traces: Sequence[Path] = (), stats_file: Path | None = None,
                    load_file: Path | None = None, check: ShapeCheck | None = None) -> RoutingStats:
    """The statistics of exactly one kind of input: traces, a stats file or a load matrix. ``check(L, E)``
    validates the shape as soon as it is known (before a long pass over traces)."""
    given = [name for name, v in (("traces", traces), ("--stats", stats_file), ("--load", load_file)) if v]
    if len(given) != 1:
        raise UsageError("give the input as trace file(s), --stats FILE or --load FILE"
                         + (f" (got {' and '.join(given)})" if given else ""))
    if traces:
        return stats_from_traces(traces, check)
    stats = load_stats_file(stats_file) if stats_file is not None else load_matrix(load_file)
    if check is not None:
        check(stats.num_layers, stats.num_experts)
    return stats


def resolve_topology(gpus: int | None, nodes: int | None, topology_file: Path | None,
                     default: Topology | None = None) -> Topology:
    """The topology of ``--topology FILE`` or ``--gpus G [--nodes N]`` (checked against each other), else
    ``default``; a UsageError naming the values otherwise."""
    if topology_file is not None:
        topo = Topology.load(topology_file)
        for flag, field, value in (("--gpus", "num_gpus", gpus), ("--nodes", "num_nodes", nodes)):
            if value is not None and value != getattr(topo, field):
                raise UsageError(f"{topology_file}: field '{field}' is {getattr(topo, field)}, but {flag} is {value}")
        return topo
    if gpus is not None:
        return preset(gpus, nodes or 1)
    if nodes is not None and default is not None and nodes != default.num_nodes:
        return preset(default.num_gpus, nodes)
    if default is not None:
        return default
    raise UsageError("give the GPUs with --gpus G (and --nodes N), or a topology file with --topology FILE")
