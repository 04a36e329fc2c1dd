"""Fleet scale: routing statistics of many trace shards counted on a distributed engine (Dask).

``distributed_stats(paths, engine="dask")`` plans shards (``placer.scale.shards``: one per file, or
row-group ranges of a large file), counts each on a worker with the core's counting (``StatsBuilder``)
and adds the counts up in a tree (``placer.scale.dask_runner``). The result equals
``placer.core.stats.stats_from_traces(paths)`` bit for bit: every count array, the metadata, the splits
and the token sample of the summary (docs/scale.md).

The engine is an optional extra: ``pip install 'moeplace[dask]'``. Ray is named by ``--engine`` but not
implemented (docs/scale.md says why Dask).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from placer.core.errors import InputError
from placer.core.stats.core import RoutingStats
from placer.core.stats.stream import (
    DEFAULT_SAMPLE_TOKENS,
    SplitBy,
    count_fields,
    parse_split,
    sample_stride,
)
from placer.core.trace.reader import DEFAULT_BATCH, TraceDataset
from placer.progress import shard_progress, warn
from placer.scale.dask_runner import check_workers, connect, count_on_cluster, require_workers
from placer.scale.shards import CountJob, Fault, Shard, plan_shards, total_entries

ENGINES = ("dask", "ray")
# Row groups are cut into shards of at most this many tokens (a DeepSeek-V3-shaped shard of 1M tokens is
# 464M routing entries: about half a minute per core, and 90 MB of counts to merge).
DEFAULT_SHARD_TOKENS = 1 << 20


def require_engine(engine: str) -> None:
    """A one-line InputError (exit 2) unless ``engine`` is supported and installed."""
    if engine == "ray":
        raise InputError("--engine ray is not supported: moeplace counts shards on Dask (docs/scale.md says "
                         "why); use --engine dask")
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: choose dask")
    try:
        # lazy: Dask is the optional extra moeplace[dask]
        import distributed  # noqa: F401
    except ImportError:
        raise InputError("--engine dask needs Dask's distributed scheduler: pip install 'moeplace[dask]'") from None


def plan(paths: Sequence[str | os.PathLike] | str | os.PathLike, by: SplitBy | str | None = None,
         sample_tokens: int = DEFAULT_SAMPLE_TOKENS, batch_size: int = DEFAULT_BATCH,
         shard_tokens: int | None = DEFAULT_SHARD_TOKENS) -> tuple[TraceDataset, list[Shard], CountJob]:
    """The dataset, its shards and what each is counted with, from the files' footers (nothing is read yet;
    the checks of the single pass: one shape, the split's column present)."""
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size} must be at least 1")
    ds = TraceDataset(paths)
    split = parse_split(by)
    shards = plan_shards(ds, shard_tokens)
    job = CountJob(meta=ds.meta, by=split, sample_stride=sample_stride(ds.num_tokens, sample_tokens),
                   fields=tuple(count_fields(ds, split)), batch_size=batch_size)
    return ds, shards, job


def distributed_stats(paths: Sequence[str | os.PathLike] | str | os.PathLike, engine: str = "dask",
                      address: str | None = None, workers: int | None = None, by: SplitBy | str | None = None,
                      sample_tokens: int = DEFAULT_SAMPLE_TOKENS, batch_size: int = DEFAULT_BATCH,
                      shard_tokens: int | None = DEFAULT_SHARD_TOKENS, quiet: bool | None = None,
                      debug: bool = False, fault: Fault | None = None) -> RoutingStats:
    """The statistics of ``stats_from_traces(paths, by, sample_tokens)``, counted shard by shard on ``engine``.

    ``address``: a running scheduler to join (``tcp://host:8786``); None starts a local cluster of
    ``workers`` processes (default: one per core) and stops it afterwards. With an address, ``workers`` is
    how many workers to wait for. ``shard_tokens``: the most tokens per shard (files are cut at row-group
    boundaries; None: one shard per file). Progress (shards done, entries/s) goes to stderr unless
    ``quiet``; a retried shard is a one-line warning there. ``fault``: a failure to inject, for tests.
    """
    require_engine(engine)
    require_workers(workers)
    # Step 1: plan on the client.
    ds, shards, job = plan(paths, by, sample_tokens, batch_size, shard_tokens)
    # Step 2: count on the cluster and reduce; Step 3: the statistics, as the single pass makes them.
    with connect(address, workers, debug) as (client, threads):
        check_workers(client, shards[0].path)
        job = dataclasses.replace(job, threads=threads, fault=fault)
        where = "local dask" if address is None else f"dask at {address}"
        with shard_progress(len(shards), total_entries(shards, ds.meta), f"stats on {where}", quiet=quiet) as done:
            builder = count_on_cluster(client, shards, job, done, warn)
    return builder.result(sources=[str(p) for p in ds.paths])


__all__ = ["DEFAULT_SHARD_TOKENS", "ENGINES", "Fault", "Shard", "distributed_stats", "plan", "plan_shards",
           "require_engine"]
