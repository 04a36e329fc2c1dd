"""One expert-parallel rank of a replay over torch.distributed (gloo on CPU, NCCL on GPUs; same code).

The rank holds the SwiGLU experts of exactly the slots the placement gives its GPU and, per step, the
hidden states of its home tokens (attention data parallelism: ``home_gpu(seq, G)``). Each MoE layer runs
the exchanges and the expert compute of its plan (``placer.replay.plan``): before each exchange the ranks
swap their per-destination row counts with ``all_to_all_single`` (the receive buffer is sized from them, and
they are checked against the plan), then the hidden states with ``all_to_all_single`` and variable splits.
At the end rank 0 gathers every rank's measurements and final outputs and checks them against the
single-process reference.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from placer.core.errors import MoeplaceError
from placer.replay.config import ReplayConfig
from placer.replay.datapath import TCompute, TExchange, Timer, compute, pack, unpack
from placer.replay.experts import DTYPES, ExpertCache
from placer.replay.plan import exchanges_of, link_bytes
from placer.replay.reference import Checker, load_routing, planned_steps
from placer.replay.report import CaseMeasure, case_report

Progress = Callable[[int], None]


class DistComm:
    """The exchange over torch.distributed: counts first, then the rows."""

    def __init__(self, rank: int, device: torch.device) -> None:
        self.rank, self.device = rank, device
        self.where = ""

    def exchange(self, ex: TExchange, buf: torch.Tensor) -> torch.Tensor:
        send = pack(ex, buf)
        counts = torch.tensor(ex.send_splits, dtype=torch.int64, device=self.device)
        got = torch.empty_like(counts)
        dist.all_to_all_single(got, counts)
        recv_splits = got.tolist()
        if recv_splits != ex.recv_splits:
            raise MoeplaceError(f"rank {self.rank}: {self.where}: received row counts {recv_splits} differ from "
                                f"the plan's {ex.recv_splits}")
        recv = torch.empty(sum(recv_splits), buf.shape[1], dtype=buf.dtype, device=self.device)
        dist.all_to_all_single(recv, send, output_split_sizes=recv_splits, input_split_sizes=ex.send_splits)
        return unpack(ex, buf, recv)


def _inject_failure(cfg: ReplayConfig, rank: int) -> None:
    """Test hook (``--fail-rank``): make this rank fail the way ``--fail-how`` says."""
    if cfg.fail_how == "raise":
        raise RuntimeError(f"injected failure (test hook --fail-rank {rank})")
    if cfg.fail_how == "exit":
        os._exit(3)
    time.sleep(10 ** 6)


def device_for(backend: str, local_rank: int) -> torch.device:
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise MoeplaceError("--backend nccl needs CUDA GPUs and none is visible")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def run_rank(rank: int, world: int, backend: str, init_method: str, cfg: ReplayConfig,
             progress: Progress | None = None, local_rank: int | None = None) -> list[dict] | None:
    """Join the process group, replay every case, and return the case reports on rank 0 (None elsewhere).

    ``progress(run)`` is called after each step (of every placement); ``progress(-1)`` once the group is
    joined."""
    device = device_for(backend, rank if local_rank is None else local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=cfg.timeout_s + 60))
    progress = progress or (lambda run: None)
    progress(-1)  # joined the group
    # On an error the group is not torn down here: the caller reports the error first, then the process
    # exits; tearing down first would let the other ranks report "connection closed" before it.
    result = _replay(rank, world, cfg, device, progress)
    dist.destroy_process_group()
    return result


def _replay(rank: int, world: int, cfg: ReplayConfig, device: torch.device, progress: Progress) -> list[dict] | None:
    if world != cfg.world_size:
        raise MoeplaceError(f"rank {rank}: the process group has {world} ranks, the placements {cfg.world_size} GPUs")
    routing = load_routing(cfg.trace, cfg.num_tokens, cfg.num_layers)
    sched = cfg.schedule
    source = cfg.expert_source()
    dt = DTYPES[cfg.dtype]
    timer = Timer(device)
    comm = DistComm(rank, device)
    nodes = cfg.node_of_rank()
    row_bytes = cfg.hidden * torch.empty((), dtype=dt).element_size()
    cache = ExpertCache(source, dt, device)
    checker = Checker(routing, sched, source, cfg.hidden, cfg.dtype, cfg.seed, device) if rank == 0 else None
    checked = set(sched.checked_steps(cfg.check))
    S, L = cfg.steps, cfg.num_layers
    experts = []  # per case: [L] lists of this rank's slot weights
    meas, outputs = [], []
    for case in cfg.cases:
        P = case.placement
        spg = P.slots_per_gpu
        experts.append([cache.slots(P.phy2log_LP[l], rank * spg, spg, l) for l in range(L)])
        m = {k: np.zeros((S, L)) for k in ("dispatch_ms", "compute_ms", "combine_ms", "tokens")}
        m.update(step_ms=np.zeros(S), return_ms=np.zeros(S), bytes_intra=np.zeros((S, L + 1)),
                 bytes_inter=np.zeros((S, L + 1)))
        meas.append(m)
        outputs.append({})
    for ps in planned_steps(sched, cfg.cases, routing, cfg.seed, cfg.hidden, ranks=[rank]):
        plan, i, ci, m = ps.plan, ps.step, ps.case_index, meas[ps.case_index]
        exch = {(l, ph): TExchange.of(per[rank], device) for l, ph, per in exchanges_of(plan)}
        comp = [TCompute.of(lp.compute[rank], dt, device) for lp in plan.layers]
        buf = ps.h0[torch.from_numpy(plan.home_tokens[rank])].to(dt).to(device)
        if cfg.fail_rank == rank and ci == 0 and ps.measured and i == 0:
            _inject_failure(cfg, rank)
        dist.barrier()
        out, times = _step(L, exch, comp, experts[ci], buf, comm, timer)
        if ps.measured:
            for k in ("dispatch_ms", "compute_ms", "combine_ms"):
                m[k][i] = times[k]
            m["step_ms"][i], m["return_ms"][i] = times["step_ms"], times["return_ms"]
            m["tokens"][i] = [c.tokens_computed for c in comp]
            for l, ph, per in exchanges_of(plan):
                bi, bx, _, _ = link_bytes(per[rank], rank, row_bytes, nodes)
                m["bytes_intra"][i, l] += bi
                m["bytes_inter"][i, l] += bx
            if i in checked:
                outputs[ci][i] = (plan.home_tokens[rank] + ps.start, out.float().cpu())
        if ci == len(cfg.cases) - 1:
            progress(ps.run)
    results = []
    for ci, case in enumerate(cfg.cases):
        gathered = [None] * world if rank == 0 else None
        dist.gather_object({"m": meas[ci], "out": outputs[ci]}, gathered, dst=0)
        if rank == 0:
            by_step: dict[int, list] = {}
            for g in gathered:
                for step, pair in g["out"].items():
                    by_step.setdefault(step, []).append(pair)
            check = checker.check(by_step)
            measure = CaseMeasure.from_ranks([g["m"] for g in gathered])
            results.append(case_report(case, measure, check, nodes, cfg.moe_layer_indices[:L]))
    return results if rank == 0 else None


def _step(L: int, exch: dict, comp: list[TCompute], experts_L: list, buf: torch.Tensor, comm: DistComm,
          timer: Timer) -> tuple[torch.Tensor, dict]:
    """One step of this rank through every layer, running the exchanges its plan has (``exch``: by layer and
    phase); returns the final home rows and the phase times."""
    timer.reset()
    marks = {"start": timer.mark()}
    for l in range(L):
        comm.where = f"layer {l} dispatch"
        x = comm.exchange(exch[(l, "dispatch")], buf)
        marks[(l, "dispatch")] = timer.mark()
        buf = compute(comp[l], x, experts_L[l])
        marks[(l, "compute")] = timer.mark()
        if (l, "combine") in exch:  # ep: the partial sums back home
            comm.where = f"layer {l} combine"
            buf = comm.exchange(exch[(l, "combine")], buf)
        marks[(l, "combine")] = timer.mark()
    if (-1, "return") in exch:  # coherent: home after the last layer
        comm.where = "return home"
        buf = comm.exchange(exch[(-1, "return")], buf)
    marks["end"] = timer.mark()
    timer.synchronize()
    prev = marks["start"]
    times = {k: np.zeros(L) for k in ("dispatch_ms", "compute_ms", "combine_ms")}
    for l in range(L):
        for ph in ("dispatch", "compute", "combine"):
            times[f"{ph}_ms"][l] = timer.elapsed_ms(prev, marks[(l, ph)])
            prev = marks[(l, ph)]
    times["return_ms"] = timer.elapsed_ms(prev, marks["end"])
    times["step_ms"] = timer.elapsed_ms(marks["start"], marks["end"])
    return buf, times
