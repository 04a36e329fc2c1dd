"""Routing statistics: load, co-activation and transitions counted from traces (exact, streaming, fast).

The one-call API for downstream code:

- ``stats_from_traces(paths, by=None) -> RoutingStats``: count traces (files or directories) in one pass;
- ``load_stats(path) -> RoutingStats`` / ``save_stats(path, stats)``: the versioned ``.npz`` stats file;
- ``load_only_stats(path, top_k=None) -> RoutingStats``: a load matrix or an SGLang stat dump;
- ``merge_stats([...])`` / ``merge_files([...])``: sums of shards; ``summarize(stats)``: the summary figures.
"""

from placer.core.stats.core import COUNT_FIELDS, FastCounter, RoutingStats, compute_stats, merge_stats
from placer.core.stats.io import load_stats, merge_files, save_stats
from placer.core.stats.loadonly import load_only_stats
from placer.core.stats.stream import SplitBy, stats_from_batches, stats_from_traces
from placer.core.stats.summary import summarize

__all__ = [
    "COUNT_FIELDS",
    "FastCounter",
    "RoutingStats",
    "SplitBy",
    "compute_stats",
    "load_only_stats",
    "load_stats",
    "merge_files",
    "merge_stats",
    "save_stats",
    "stats_from_batches",
    "stats_from_traces",
    "summarize",
]
