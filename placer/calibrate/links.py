"""All-to-all bandwidth and latency between ranks, measured as replay sends: ``all_to_all_single`` with
variable splits (every rank sends a different number of rows to each other rank, none to itself).

Inside a node the ranks of each node exchange among themselves; across nodes the ranks with the same local
index (one per node) exchange among themselves, so every message crosses the network. Each message size is
timed ``repeats`` times after ``warmup`` calls, each call after a barrier, in wall time (with the GPU
synchronised); a call's time is the slowest rank's, and a size's time the median over calls. The fit
(``placer.core.hardware.fit_link``) is ``latency + bytes / bandwidth`` with bytes the most any rank of the group
sends or receives in the call: ``Topology.link_time_us`` of one GPU's send in one phase.

When the command starts the ranks itself (``launch_ranks``: one machine) every rank is on one node and only
the intra-node link is measured; under torchrun across nodes (``LOCAL_WORLD_SIZE`` ranks per node) both are.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from placer.core.errors import InputError, MoeplaceError
from placer.core.hardware import LinkFit, fit_link

# Mean bytes a rank sends to each other rank per call (the splits vary around it).
DEFAULT_SIZES = (1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 22)
# Bytes of memory one gloo rank process needs (torch imported, buffers): a world size the machine cannot
# hold is refused before anything starts.
GLOO_RANK_BYTES = 600 << 20
# Ranks per core beyond which a gloo run measures the scheduler, not the transport.
GLOO_RANKS_PER_CORE = 8


@dataclass(frozen=True)
class LinkSpec:
    """A link measurement. ranks_per_node: ranks of one node (None: all on one node)."""

    backend: str
    world_size: int
    sizes: tuple[int, ...] = DEFAULT_SIZES
    repeats: int = 10
    warmup: int = 3
    seed: int = 0
    timeout_s: float = 300.0
    ranks_per_node: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in ("gloo", "nccl"):
            raise ValueError(f"backend {self.backend!r} is not one of gloo, nccl")
        if self.world_size < 2:
            raise ValueError(f"world size {self.world_size}: links need at least 2 ranks")
        if self.repeats < 1 or self.warmup < 0 or not self.sizes or min(self.sizes) < 4:
            raise ValueError("repeats must be >= 1, warmup >= 0, and every size at least 4 bytes")


def check_world(backend: str, world_size: int) -> None:
    """Refuse, before anything starts, a world size this machine cannot start (InputError, one line)."""
    if world_size < 2:
        raise InputError(f"--world-size {world_size}: measuring links needs at least 2 ranks")
    if backend == "nccl":
        import torch  # lazy: torch takes seconds to import

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError("--backend nccl needs CUDA GPUs and none is visible (use --backend gloo)")
        if world_size > n:
            raise InputError(f"--backend nccl needs one GPU per rank: world size {world_size} > {n} GPU(s) here "
                             f"(run under torchrun across nodes for more)")
        return
    cores = os.cpu_count() or 1
    avail = _available_memory()
    if world_size > GLOO_RANKS_PER_CORE * cores or (avail is not None and world_size * GLOO_RANK_BYTES > avail):
        mem = f"{avail / 2**30:.1f} GiB available" if avail is not None else "unknown memory"
        most = GLOO_RANKS_PER_CORE * cores if avail is None else min(GLOO_RANKS_PER_CORE * cores, avail // GLOO_RANK_BYTES)
        raise InputError(f"--world-size {world_size}: gloo starts one process per rank and this machine has {cores} "
                         f"core(s) and {mem} (at most {most} ranks)")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def split_matrix(members: int, mean_bytes: int, elem: int, seed: int) -> np.ndarray:
    """[members, members] elements rank i sends to rank j: uniform in [0.25, 1.75] x the mean, 0 to itself.
    Every rank draws the same matrix from the seed, so it knows what it receives without asking."""
    rng = np.random.default_rng([seed, members, mean_bytes])
    m = np.maximum(1, np.round(mean_bytes / elem * rng.uniform(0.25, 1.75, (members, members)))).astype(np.int64)
    np.fill_diagonal(m, 0)
    return m


def measure_rank(rank: int, world: int, backend: str, init_method: str, spec: LinkSpec,
                 progress: Callable[[int], None], local_rank: int | None = None) -> dict | None:
    """One rank of a link measurement; rank 0 returns ``{"intra": points, "inter": points}`` (points: [[bytes,
    us], ...] or None where the class has one rank per group), the others None."""
    import torch  # lazy: torch takes seconds to import
    import torch.distributed as dist  # lazy: torch takes seconds to import

    from placer.replay.worker import device_for  # lazy: placer.replay.worker imports torch

    device = device_for(backend, rank if local_rank is None else local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=spec.timeout_s + 60))
    progress(-1)
    rpn = spec.ranks_per_node or world
    if world % rpn:
        raise MoeplaceError(f"{world} ranks do not divide into nodes of {rpn}")
    nodes = world // rpn
    # Every rank creates every group, in the same order (torch.distributed requires it).
    intra = [list(range(n * rpn, (n + 1) * rpn)) for n in range(nodes)]
    inter = [[n * rpn + j for n in range(nodes)] for j in range(rpn)] if nodes > 1 else []
    handles = {tuple(m): dist.new_group(m) for m in intra + inter}
    out: dict[str, list | None] = {"intra": None, "inter": None}
    step = 0
    for cls, groups in (("intra", intra), ("inter", inter)):
        mine = next((m for m in groups if rank in m), None)
        if mine is None or len(mine) < 2:
            continue
        points = []
        for size in spec.sizes:
            points.append(_time_size(rank, mine, handles[tuple(mine)], size, spec, device))
            step += 1
            progress(step)
        out[cls] = points
    dist.barrier()
    dist.destroy_process_group()
    return out if rank == 0 else None


def _time_size(rank: int, members: list[int], group, size: int, spec: LinkSpec, device) -> list[float]:
    import torch  # lazy: torch takes seconds to import
    import torch.distributed as dist  # lazy: torch takes seconds to import

    me = members.index(rank)
    elem = 4  # float32 rows of one element: the splits are in elements
    m = split_matrix(len(members), size, elem, spec.seed)
    send_splits, recv_splits = m[me].tolist(), m[:, me].tolist()
    send = torch.ones(sum(send_splits), dtype=torch.float32, device=device)
    recv = torch.empty(sum(recv_splits), dtype=torch.float32, device=device)
    busiest = int(max(m.sum(axis=1).max(), m.sum(axis=0).max())) * elem
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for r in range(spec.warmup + spec.repeats):
        dist.barrier(group=group)
        sync()
        a = time.perf_counter()
        dist.all_to_all_single(recv, send, output_split_sizes=recv_splits, input_split_sizes=send_splits, group=group)
        sync()
        t = torch.tensor([(time.perf_counter() - a) * 1e6], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        if r >= spec.warmup:
            times.append(float(t.item()))
    return [float(busiest), float(np.median(times))]


def fit_points(points: list | None) -> tuple[LinkFit, np.ndarray] | None:
    """The link fit of one class's measured points (None if the class was not measured)."""
    if not points:
        return None
    arr = np.asarray(points, dtype=np.float64)
    return fit_link(arr[:, 0], arr[:, 1]), arr
