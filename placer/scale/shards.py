"""Shards of a trace dataset and what a worker does with one: count it, merge two counts.

A **shard** is one trace file, or a range of whole Parquet row groups of a large one, with the index of
its first token in the whole dataset (files in the order the single-process reader takes them). A worker
counts its shard with the core's ``StatsBuilder`` started at that index, so it keeps the sample tokens the
single pass would; ``merge_counts`` adds two workers' builders (``StatsBuilder.merge``: integer sums, the
sample kept in token order). Any tree of merges over all shards therefore gives the single-process
statistics bit for bit.

The functions here run on the workers: they take and return picklable values and print nothing.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numba

import placer
from placer.core.errors import InputError
from placer.core.stats.stream import SplitBy, StatsBuilder
from placer.core.trace.reader import TraceDataset, TraceReader
from placer.core.trace.schema import TraceMeta

# The counting kernels run in parallel over layers; with numba's workqueue threading layer two concurrent
# calls from one process are not safe, so a worker process runs one kernel call at a time (its other
# threads may still read Parquet meanwhile).
_KERNEL_LOCK = threading.Lock()


@dataclass(frozen=True)
class Shard:
    """Tokens ``first_token`` .. ``first_token + tokens - 1`` of the dataset: row groups ``row_groups`` of
    ``path`` (absolute, as workers open it); ``source`` is the path as the user gave it."""

    index: int
    count: int
    path: str
    source: str
    row_groups: range
    whole_file: bool
    first_token: int
    tokens: int

    def describe(self) -> str:
        first, last = self.row_groups.start, self.row_groups.stop - 1
        where = self.source if self.whole_file else (
            f"{self.source}, row group {first}" if first == last else f"{self.source}, row groups {first}-{last}")
        return f"shard {self.index + 1} of {self.count} ({where})"


def plan_shards(ds: TraceDataset, shard_tokens: int | None = None) -> list[Shard]:
    """One shard per file of ``ds``, a file of more than ``shard_tokens`` tokens cut into ranges of whole
    row groups of at most ``shard_tokens`` tokens (a row group larger than that is a shard of its own)."""
    if shard_tokens is not None and shard_tokens < 1:
        raise InputError(f"--shard-tokens {shard_tokens} must be a positive number of tokens")
    pieces: list[tuple[TraceReader, range, int, int]] = []
    offset = 0
    for reader in ds.readers:
        sizes = reader.row_group_tokens
        start, tokens = 0, 0
        for i, n in enumerate(sizes):
            if shard_tokens is not None and tokens and tokens + n > shard_tokens:
                pieces.append((reader, range(start, i), offset, tokens))
                offset, start, tokens = offset + tokens, i, 0
            tokens += n
        pieces.append((reader, range(start, len(sizes)), offset, tokens))
        offset += tokens
    return [Shard(index=i, count=len(pieces), path=str(Path(r.path).resolve()), source=str(r.path), row_groups=rg,
                  whole_file=len(rg) == len(r.row_group_tokens), first_token=first, tokens=tokens)
            for i, (r, rg, first, tokens) in enumerate(pieces)]


@dataclass(frozen=True)
class Fault:
    """A failure to inject into one shard's counting, for tests of the retry path: on the first ``times``
    attempts at shard ``shard`` the worker process exits (``kind="exit"``: a worker that dies) or the task
    raises (``kind="raise"``). Attempts are counted with files in ``marker_dir`` (shared by the workers)."""

    shard: int
    kind: str = "exit"
    times: int = 1
    marker_dir: str = ""

    def maybe_fail(self, shard: Shard) -> None:
        if shard.index != self.shard:
            return
        for attempt in range(self.times):
            try:
                os.close(os.open(os.path.join(self.marker_dir, f"attempt-{attempt}"), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            if self.kind == "exit":
                os._exit(1)
            raise RuntimeError(f"injected failure of shard {shard.index + 1} (attempt {attempt + 1})")


@dataclass(frozen=True)
class CountJob:
    """What every shard is counted with: the dataset's metadata, split, sample stride, the fields to read,
    the batch size and the kernels' threads per worker (None: numba's default, the worker's cores)."""

    meta: TraceMeta
    by: SplitBy | None
    sample_stride: int
    fields: tuple[str, ...]
    batch_size: int
    threads: int | None = None
    fault: Fault | None = None


def count_shard(shard: Shard, job: CountJob) -> StatsBuilder:
    """Count one shard (runs on a worker)."""
    if job.threads is not None:
        numba.set_num_threads(max(1, min(job.threads, numba.config.NUMBA_NUM_THREADS)))
    if job.fault is not None:
        job.fault.maybe_fail(shard)
    reader = TraceReader(shard.path)
    if reader.meta.shape != job.meta.shape:
        raise InputError(f"{shard.source}: shape (layers, experts, top_k) = {reader.meta.shape} on the worker, "
                         f"but {job.meta.shape} when the shards were planned; was the file replaced?")
    builder = StatsBuilder(job.meta, job.by, job.sample_stride, first_token=shard.first_token)
    for batch in reader.iter_batches(batch_size=job.batch_size, fields=job.fields, row_groups=shard.row_groups):
        with _KERNEL_LOCK:
            builder.add(batch)
    if builder.seen - shard.first_token != shard.tokens:
        raise InputError(f"{shard.describe()}: read {builder.seen - shard.first_token:,} tokens, expected "
                         f"{shard.tokens:,}; was the file replaced while counting?")
    return builder


def merge_counts(a: StatsBuilder, b: StatsBuilder) -> StatsBuilder:
    """The counts of two disjoint sets of shards added up (runs on a worker). ``a`` and ``b`` may be the
    worker's own stored results, which a retried merge would read again: they are left unchanged."""
    return copy.deepcopy(a).merge(b)


def probe_worker(path: str) -> tuple[str, bool]:
    """What a worker sees (runs on each worker before counting): its moeplace version and whether it can
    read the first shard's file."""
    return getattr(placer, "__version__", "unknown"), os.access(path, os.R_OK)


def total_entries(shards: Sequence[Shard], meta: TraceMeta) -> int:
    """(token, layer, rank) entries of the shards, counting every layer of every token (progress only)."""
    return sum(s.tokens for s in shards) * meta.num_layers * meta.top_k
