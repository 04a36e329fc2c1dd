"""Where solve and evaluate get their inputs: routing statistics (from traces, a stats file or a load matrix)
and the topology (from ``--gpus/--nodes``, a topology file or a placement).

``read_statistics`` is the one place that turns the command line's input options into ``RoutingStats``;
the statistics module's own loaders plug in here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from placer.core.errors import InputError
from placer.core.fileio import require_file
from placer.core.mode import TrafficMode
from placer.core.stats import RoutingStats, load_only_stats, load_stats
from placer.core.stats import stats_from_traces as compute_stats_from_traces
from placer.core.hardware import load_topology_source
from placer.core.topology import Topology, preset
from placer.core.trace.reader import TraceDataset
from placer.core.trace.schema import RoutingBatch
from placer.progress import progress_bar
from solvers import PlacementProblem


ShapeCheck = Callable[[int, int], None]


def stats_from_traces(paths: Sequence[str | os.PathLike] | str | os.PathLike, check: ShapeCheck | None = None,
                      **options: Any) -> RoutingStats:
    """Exact statistics of one or more traces read together (``placer.core.stats.stats_from_traces``, which
    takes ``options``: ``by``, ``sample_tokens``, ``batch_size``), with a progress bar on stderr.
    ``check(L, E)`` runs on the traces' metadata, before the pass over the tokens."""
    ds = TraceDataset(paths)
    if check is not None:
        L, E, _ = ds.meta.shape
        check(L, E)
    with progress_bar(ds.num_tokens, "stats", unit="tok") as advance:
        return compute_stats_from_traces(paths, progress=advance, **options)


def load_matrix(path: str | os.PathLike) -> RoutingStats:
    """Load-only statistics: a [layers, experts] matrix (.npy, .csv, .pt) or an SGLang ``stat`` dump."""
    return load_only_stats(path)


def load_stats_file(path: str | os.PathLike) -> RoutingStats:
    """Statistics written by ``moeplace stats`` (read by the statistics module)."""
    return load_stats(require_file(path, "stats file"))


def read_statistics(traces: Sequence[Path] = (), stats_file: Path | None = None,
                    load_file: Path | None = None, check: ShapeCheck | None = None) -> RoutingStats:
    """The statistics of exactly one kind of input: traces, a stats file or a load matrix. ``check(L, E)``
    validates the shape as soon as it is known (before a long pass over traces)."""
    given = [name for name, v in (("traces", traces), ("--stats", stats_file), ("--load", load_file)) if v]
    if len(given) != 1:
        raise InputError("give the input as trace file(s), --stats FILE or --load FILE"
                         + (f" (got {' and '.join(given)})" if given else ""))
    if traces:
        return stats_from_traces(traces, check)
    stats = load_stats_file(stats_file) if stats_file is not None else load_matrix(load_file)
    if check is not None:
        check(stats.num_layers, stats.num_experts)
    return stats


# Token paths are read for exact objectives up to this many (token, layer, rank) entries (about 1 GB).
MAX_PATH_ENTRIES = 1_000_000_000


def token_paths(traces: Sequence[Path]) -> RoutingBatch | None:
    """The traces' tokens in order as one ``RoutingBatch`` (experts, present, seq) for solvers whose objective
    is exact on token paths; None if the traces are too large to hold (statistics are then used)."""
    ds = TraceDataset(list(traces))
    L, _, K = ds.meta.shape
    if ds.num_tokens * L * K > MAX_PATH_ENTRIES:
        return None
    return ds.read_all(fields=("experts", "present", "seq"))


def problem_from_stats(stats: RoutingStats, topology: Topology, redundant: int = 0,
                       mode: TrafficMode = TrafficMode.EP,
                       paths: RoutingBatch | None = None) -> PlacementProblem:
    """The ``PlacementProblem`` of some statistics on a topology (ValueError naming the values if it cannot
    be placed: slots that do not divide by the GPUs, negative redundancy). ``paths``: the traces' tokens
    (``token_paths``) for the solvers whose objective is exact on them."""
    return PlacementProblem(
        load_LE=stats.load_LE, topology=topology, num_redundant=redundant, mode=mode,
        top_k=max(stats.top_k, 1), coact_LEE=stats.coact_LEE, trans_LEE=stats.trans_LEE,
        source=", ".join(stats.sources) or None,
        model_layer_indices=tuple(stats.moe_layer_indices) or None,
        paths_TLK=None if paths is None else paths.experts_TLK,
        present_TL=None if paths is None else paths.present_TL,
        seq_T=None if paths is None else paths.seq_T,
    )


def resolve_topology(gpus: int | None, nodes: int | None, topology_file: Path | str | None,
                     default: Topology | None = None) -> Topology:
    """The topology of ``--topology`` combined with ``--gpus G [--nodes N]``, else ``default``.

    ``--topology`` names a hardware file (``moeplace calibrate``'s output) or a preset (``h100``, ...): it says
    what the machine is, ``--gpus``/``--nodes`` how many GPUs and nodes (default: ``default``'s). A flat
    topology file carries its own counts, which ``--gpus``/``--nodes`` must then match. Without
    ``--topology``, ``--gpus``/``--nodes`` take the h100 preset. InputError naming the values otherwise.
    This is the one path every command (solve, evaluate, replay, simulate) reads a topology through.
    """
    if topology_file is not None:
        src = load_topology_source(topology_file)
        if isinstance(src, Topology):
            for flag, field, value in (("--gpus", "num_gpus", gpus), ("--nodes", "num_nodes", nodes)):
                if value is not None and value != getattr(src, field):
                    raise InputError(f"{topology_file}: field '{field}' is {getattr(src, field)}, but {flag} is {value}")
            return src
        if gpus is None:
            if default is None:
                raise InputError(f"{src.where} describes the hardware, not how many GPUs: give --gpus G "
                                 f"(and --nodes N)")
            gpus, nodes = default.num_gpus, default.num_nodes if nodes is None else nodes
        return src.topology(gpus, 1 if nodes is None else nodes)
    if gpus is not None:
        return preset(gpus, 1 if nodes is None else nodes)
    if nodes is not None and default is not None and nodes != default.num_nodes:
        return preset(default.num_gpus, nodes, **default.hardware_fields())
    if default is not None:
        return default
    raise InputError("give the GPUs with --gpus G (and --nodes N), or a topology file with --topology FILE")
