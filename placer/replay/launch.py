"""Starting the ranks of a gloo or NCCL run (replay, calibrate's link measurement), watching them, and
stopping them all when one fails.

Without torchrun, ``launch_ranks`` starts one process per rank with torch.multiprocessing (spawn), rendezvous
through a file in a private temporary folder (no port to collide with other runs). Ranks report progress
and errors on a queue. When a rank raises (its error is reported), dies (a non-zero exit or a signal, with
no report), or no rank reports progress for ``timeout_s`` seconds, every rank is stopped (SIGTERM, then
SIGKILL), the temporary folder removed, and one error names the rank and what happened. Nothing is left
running, on success or failure (Ctrl-C, and SIGTERM, which the command line turns into an exception, included).
A launcher killed outright (SIGKILL) cannot stop its ranks: each rank watches its parent and exits, removing
the rendezvous folder, within half a second of the parent's death (``watch_parent``).

Under torchrun (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set), the command runs as that one rank with the
``env://`` rendezvous instead (``torchrun_env``); torchrun then stops the other ranks if one fails.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from placer.core.errors import MoeplaceError
from placer.replay.config import ReplayConfig
from placer.replay.worker import run_rank

# A rank's work: target(rank, world, backend, init_method, payload, progress) -> result (rank 0's is returned).
RankTarget = Callable[..., Any]

# The process ids of the last launch's ranks (tests check that none is left).
LAST_RANK_PIDS: list[int] = []
# The least time ranks get to start and join the group, whatever --timeout says.
STARTUP_S = 120.0


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun (or any launcher setting the env:// variables)."""
    env = os.environ
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")) and "MASTER_ADDR" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def rank_threads(threads: int, world: int) -> int:
    """CPU threads of one rank: ``threads``, or (0) the cores shared evenly among the ranks."""
    return threads or max(1, (os.cpu_count() or 1) // world)


def replay_rank(rank: int, world: int, backend: str, init_method: str, cfg: ReplayConfig, progress) -> Any:
    return run_rank(rank, world, backend, init_method, cfg, progress=progress)


def watch_parent(parent: int, rendezvous_dir: str | None, poll_s: float = 0.5) -> threading.Thread:
    """In a rank: exit as soon as the process that started it (``parent``) is gone. A parent killed by
    SIGKILL cannot stop its ranks, and they would otherwise wait on the others until gloo's timeout; the
    rank that notices removes the rendezvous folder the parent would have removed (``rendezvous_dir``)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        if rendezvous_dir:
            shutil.rmtree(rendezvous_dir, ignore_errors=True)
        os._exit(1)

    t = threading.Thread(target=watch, name="moeplace-parent-watch", daemon=True)
    t.start()
    return t


def rendezvous_dir(init_method: str) -> str | None:
    """The private folder of a ``file://`` rendezvous (None for env:// and tcp://)."""
    return os.path.dirname(init_method[len("file://"):]) if init_method.startswith("file://") else None


def rank_entry(rank: int, world: int, backend: str, init_method: str, target: RankTarget, payload: Any,
               threads: int, q, parent: int | None = None) -> None:
    """The body of a spawned rank process: run, report the result (rank 0) or the error, exit; exit early if
    the launching process (``parent``) dies."""
    os.environ["MOEPLACE_QUIET"] = "1"
    if parent is not None:
        watch_parent(parent, rendezvous_dir(init_method))
    code = 0
    try:
        torch.set_num_threads(rank_threads(threads, world))
        result = target(rank, world, backend, init_method, payload, lambda run: q.put(("progress", rank, run)))
        q.put(("result", rank, result))
    except BaseException as exc:  # every failure is reported, then the process exits non-zero
        q.put(("error", rank, _one_line(exc)))
        code = 1
    finally:
        q.close()
        q.join_thread()
    os._exit(code)


def _describe_exit(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)


def launch(cfg: ReplayConfig, backend: str, on_progress: Callable[[int], None] | None = None,
           poll_s: float = 0.1, grace_s: float = 1.0) -> list[dict]:
    """Run a gloo/NCCL replay with one spawned process per rank; return rank 0's case reports."""
    return launch_ranks(cfg.world_size, backend, replay_rank, cfg, timeout_s=cfg.timeout_s, threads=cfg.threads,
                        on_progress=on_progress, poll_s=poll_s, grace_s=grace_s)


def launch_ranks(world: int, backend: str, target: RankTarget, payload: Any, timeout_s: float, threads: int = 0,
                 on_progress: Callable[[int], None] | None = None, poll_s: float = 0.1, grace_s: float = 1.0,
                 what: str = "replay") -> Any:
    """Run ``target`` in ``world`` spawned rank processes (``payload`` is pickled to each); return rank 0's
    result. ``target`` must be a module-level function (spawn imports it by name); it calls ``progress(-1)``
    once it joined the group and ``progress(step)`` after each step. ``what`` names the run in errors."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    tmp = tempfile.mkdtemp(prefix=f"moeplace-{what}-")
    init = f"file://{os.path.join(tmp, 'rendezvous')}"
    procs = [ctx.Process(target=rank_entry, args=(r, world, backend, init, target, payload, threads, q, os.getpid()),
                         daemon=True,
                         name=f"moeplace-{what}-rank{r}") for r in range(world)]
    LAST_RANK_PIDS.clear()
    errors: list[tuple[int, str]] = []
    result = None
    reported: set[int] = set()
    last = {r: -1 for r in range(world)}
    try:
        for p in procs:
            p.start()
        LAST_RANK_PIDS.extend(p.pid for p in procs)
        quiet_since = time.monotonic()
        failed_at = None
        ready: set[int] = set()
        # Start-up (spawning, importing torch, the rendezvous) may take a while on a busy machine.
        startup_s = max(timeout_s, STARTUP_S)
        while True:
            try:
                msg = q.get(timeout=poll_s)
            except queue.Empty:
                msg = None
            now = time.monotonic()
            if msg is not None:
                kind, rank = msg[0], msg[1]
                if kind == "progress":
                    quiet_since = now
                    if msg[2] < 0:
                        ready.add(rank)
                        continue
                    last[rank] = msg[2]
                    if rank == 0 and on_progress:
                        on_progress(msg[2])
                elif kind == "error":
                    errors.append((rank, msg[2]))
                    reported.add(rank)
                elif kind == "result":
                    reported.add(rank)
                    if rank == 0:
                        result = msg[2]
            died = [(r, p.exitcode) for r, p in enumerate(procs)
                    if p.exitcode not in (None, 0) and r not in reported]
            if (errors or died) and failed_at is None:
                failed_at = now  # collect a moment longer: find the rank that failed first, not its victims
            if failed_at is not None and (now - failed_at >= grace_s):
                if died and not any(r == died[0][0] for r, _ in errors):
                    r, code = died[0]
                    raise MoeplaceError(f"{what} failed: rank {r} died ({_describe_exit(code)}) without an error "
                                        f"report; all {world} ranks were stopped")
                r, text = errors[0]
                raise MoeplaceError(f"{what} failed: rank {r}: {text}; all {world} ranks were stopped")
            if failed_at is None and all(p.exitcode == 0 for p in procs) and 0 in reported:
                break
            limit = timeout_s if len(ready) == world else startup_s
            if failed_at is None and now - quiet_since > limit:
                behind = min(last.values())
                where = "before the first step" if behind < 0 else f"after step {behind + 1}"
                raise MoeplaceError(f"{what} failed: no rank made progress for {limit:g} s ({where}); "
                                    f"a rank is hung; all {world} ranks were stopped (--timeout)")
    finally:
        _stop(procs)
        q.close()
        q.cancel_join_thread()
        shutil.rmtree(tmp, ignore_errors=True)
    if result is None:
        raise MoeplaceError(f"{what} failed: rank 0 returned no result")
    return result
