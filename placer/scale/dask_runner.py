"""Counting shards on a Dask cluster (``distributed``): a local one started for the run, or the user's.

Step by step:

1. **Connect.** Without an address, start a ``LocalCluster`` of ``workers`` processes (one task thread each;
   the counting kernels get ``cores // workers`` threads) and stop it afterwards, whatever happens; its
   scheduler gives up on a task at the first worker that dies under it (``allowed_failures=0``), so that
   this module's own retry is the only one. With an address, join that scheduler (its own
   ``allowed-failures`` then applies before ours) and wait for its workers.
2. **Check the workers** can import moeplace and read the first shard (paths are sent, not data).
3. **Count and reduce in a tree.** Every shard is a task (as many at once as the cluster has threads); as
   soon as two results (shards or merges) are done, a merge task adds them on a worker, so results never
   travel to the client until the last one and the reduction is a binary tree as deep as the completion
   order makes it (about log2 of the shards).
4. **Retry once.** A task that fails (its worker died, or it raised) is submitted once more; a second
   failure cancels everything and raises one line naming the shard (or the merged shards) and the cause.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterator, Sequence

import placer
from placer.core.errors import InputError, MoeplaceError, first_line
from placer.core.limits import MAX_THREADS
from placer.core.stats.stream import StatsBuilder
from placer.scale.shards import CountJob, Shard, count_shard, merge_counts, probe_worker

ATTEMPTS = 2  # a task is tried at most this often
CONNECT_TIMEOUT_S = 30
WAIT_WORKERS_TIMEOUT_S = 120


@contextlib.contextmanager
def _quiet_dask_logs(debug: bool) -> Iterator[None]:
    """Dask logs worker deaths and restarts at WARNING/ERROR on the client's stderr; this module reports
    them as one-line warnings of its own instead (``--debug`` keeps Dask's logs)."""
    log = logging.getLogger("distributed")
    level = log.level
    if not debug:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def require_workers(workers: int | None) -> None:
    """InputError unless ``workers`` (None: the default) is a count of workers this command may start or wait for."""
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers} must be at least 1")
    if workers is not None and workers > MAX_THREADS:
        raise InputError(f"--workers ({workers}) must be at most {MAX_THREADS:,}")


@contextlib.contextmanager
def connect(address: str | None, workers: int | None, debug: bool = False) -> Iterator[tuple[Any, int | None]]:
    """Yield ``(client, kernel threads per worker)`` for a local cluster (``address`` None: started here and
    stopped on exit) or the scheduler at ``address``."""
    require_workers(workers)
    with _quiet_dask_logs(debug):
        yield from _connect(address, workers, debug)


def _connect(address: str | None, workers: int | None, debug: bool) -> Iterator[tuple[Any, int | None]]:
    # lazy: Dask is the optional extra moeplace[dask]
    import dask
    from distributed import Client, LocalCluster

    if address is None:
        n = workers or os.cpu_count() or 1
        threads = max(1, (os.cpu_count() or 1) // n)
        # dashboard_address ":0": its HTTP server on any free port (8787 may be another user's cluster).
        # The workers' statistical profiler samples every thread's stack each 10 ms: about a tenth of a
        # core here, for a dashboard nobody looks at.
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   scheduler_kwargs={"allowed_failures": 0},
                                   silence_logs=logging.WARNING if debug else logging.CRITICAL)
        try:
            with Client(cluster) as client:
                yield client, threads
        finally:
            cluster.close()
        return
    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"--address {address}: cannot reach a dask scheduler there ({first_line(exc)})") from None
    with client:
        want = workers or 1
        try:
            client.wait_for_workers(want, timeout=WAIT_WORKERS_TIMEOUT_S)
        except TimeoutError:
            have = len(client.scheduler_info().get("workers", {}))
            raise MoeplaceError(f"--address {address}: {have} dask worker(s) joined within "
                                f"{WAIT_WORKERS_TIMEOUT_S} s, {want} wanted (--workers)") from None
        yield client, None


def check_workers(client: Any, path: str) -> None:
    """Every worker imports moeplace and can read ``path``; else one line saying what to fix."""
    try:
        seen = client.run(probe_worker, path)
    except Exception as exc:  # a worker that cannot unpickle placer's function raises here
        raise InputError(f"the dask workers cannot run moeplace ({first_line(exc)}); install moeplace[dask] on "
                         f"every worker") from None
    for worker, (version, readable) in sorted(seen.items()):
        if version != placer.__version__:
            raise InputError(f"dask worker {worker} runs moeplace {version}, this client {placer.__version__}; "
                             f"install one version everywhere")
        if not readable:
            raise InputError(f"dask worker {worker} cannot read {path}: the traces must be at the same path on "
                             f"every worker (a shared file system)")


def _why(exc: BaseException) -> str:
    # lazy: Dask is the optional extra moeplace[dask]
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return "its worker died"
    return first_line(exc) if isinstance(exc, MoeplaceError) else f"{type(exc).__name__}: {first_line(exc)}"


def count_on_cluster(client: Any, shards: Sequence[Shard], job: CountJob,
                     shard_done: Callable[[int], None] = lambda n: None,
                     warn: Callable[[str], None] = lambda msg: None) -> StatsBuilder:
    """Count every shard and reduce the counts in a tree on ``client``'s cluster (steps 3 and 4).

    At most as many shards are counted at once as the cluster has worker threads: a worker then holds the
    one shard it counts, so a worker that dies fails that shard only (and no other shard is charged an
    attempt), and results waiting to be merged stay few.
    """
    # lazy: Dask is the optional extra moeplace[dask]
    from distributed import as_completed

    entries_per_token = job.meta.num_layers * job.meta.top_k
    tasks: dict[Any, tuple[tuple[int, ...], tuple, int]] = {}  # future -> (shards it covers, arguments, attempt)
    done = as_completed()
    waiting = list(shards)
    counting = 0

    def submit(covers: tuple[int, ...], args: tuple, attempt: int) -> None:
        f = client.submit(count_shard if isinstance(args[0], Shard) else merge_counts, *args, pure=False)
        tasks[f] = (covers, args, attempt)
        done.add(f)

    def start_counts() -> None:
        nonlocal counting
        slots = max(1, sum(client.nthreads().values()))
        while waiting and counting < slots:
            s = waiting.pop(0)
            submit((s.index,), (s, job), 1)
            counting += 1

    start_counts()
    ready: list[tuple[tuple[int, ...], Any]] = []
    try:
        for f in done:
            covers, args, attempt = tasks.pop(f)
            is_count = isinstance(args[0], Shard)
            what = args[0].describe() if is_count else f"the merge of the counts of shards {_ranges(covers)}"
            if f.status != "finished":
                try:
                    exc = f.exception()
                except BaseException as e:  # a cancelled future raises instead of returning its exception
                    exc = e
                if attempt < ATTEMPTS:
                    warn(f"{what} failed ({_why(exc)}); retrying")
                    submit(covers, args, attempt + 1)
                    continue
                cls = InputError if isinstance(exc, InputError) else MoeplaceError
                raise cls(f"{what} failed {ATTEMPTS} times, nothing written; last cause: {_why(exc)}")
            if is_count:
                counting -= 1
                shard_done(args[0].tokens * entries_per_token)
            ready.append((covers, f))
            if len(ready) >= 2:
                (ca, a), (cb, b) = ready.pop(0), ready.pop(0)
                submit(tuple(sorted(ca + cb)), (a, b), 1)
            start_counts()
        assert len(ready) == 1 and not waiting, "the reduction ended with more than one result"
        return ready[0][1].result()
    finally:
        client.cancel(list(tasks))


def _ranges(indices: Sequence[int]) -> str:
    """Shard numbers (1-based) in runs: ``1-4, 7``."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a + 1}" if a == b else f"{a + 1}-{b + 1}" for a, b in runs)
