"""The ``virtual`` backend: every rank in one process, for a machine with one GPU (NCCL refuses two ranks on
one GPU) or none.

The data path is the same plan and the same tensor code as the distributed ranks; only the transport is a
slice inside the process. Each rank's expert computation of each layer runs on the device and is timed on
its own (CUDA events on a GPU, perf_counter on CPU); the slowest rank sets the layer's compute time.
On a CPU with torch on one thread (``--threads 1``) the compute is timed with the thread's CPU time, so that
other processes of a shared machine do not stretch it (``datapath.Timer``; the report's ``timer`` says which).
Communication is not run over links: its time is **modelled** from the bytes and messages each rank sends
(``Topology.link_time_us``: NVLink inside a node, the network across nodes), and the report says so.
A layer's time is the slowest rank's dispatch + the slowest rank's compute + the slowest rank's combine.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from placer.core.errors import MoeplaceError, InputError
from placer.replay.config import ReplayConfig
from placer.replay.datapath import TCompute, TExchange, Timer, compute, pack, unpack
from placer.replay.experts import DTYPES, ExpertCache
from placer.replay.plan import RankExchange, exchanges_of, link_bytes
from placer.replay.reference import Checker, load_routing, planned_steps
from placer.replay.report import CaseMeasure, case_report
from placer.core.topology import Topology


def virtual_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU is visible (use --device cpu)")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def preflight(cfg: ReplayConfig) -> torch.device:
    """The virtual backend's device, once it is known that the run fits it (InputError otherwise): checked before
    anything starts or prints."""
    device = virtual_device(cfg.device)
    if device.type == "cuda":
        need, (free, _) = weight_bytes(cfg, cfg.expert_source()), torch.cuda.mem_get_info(device)
        if need > 0.8 * free:
            raise InputError(f"the experts of {cfg.num_layers} layers need {need / 2**30:.1f} GiB on the GPU, "
                             f"{free / 2**30:.1f} GiB are free: use --weight-bank N or --layers")
    return device


def exchange_all(exs: list[TExchange], bufs: list[torch.Tensor], where: str) -> list[torch.Tensor]:
    """Every rank's exchange at once: rank s's rows for d are the s-th block of d's receive buffer."""
    G = len(exs)
    parts = [torch.split(pack(ex, buf), ex.send_splits) for ex, buf in zip(exs, bufs)]
    out = []
    for d in range(G):
        got = [int(parts[s][d].shape[0]) for s in range(G)]
        if got != exs[d].recv_splits:
            raise MoeplaceError(f"rank {d}: {where}: received row counts {got} differ from the plan's "
                                f"{exs[d].recv_splits}")
        recv = torch.cat([parts[s][d] for s in range(G)])
        out.append(unpack(exs[d], bufs[d], recv))
    return out


def modelled_ms(exs: list[RankExchange], topo: Topology, row_bytes: int, nodes: np.ndarray) -> tuple[np.ndarray, ...]:
    """([G] modelled send time in ms, [G] intra-node bytes, [G] inter-node bytes) of one exchange."""
    stats = np.array([link_bytes(ex, r, row_bytes, nodes) for r, ex in enumerate(exs)], dtype=np.float64)
    ms = topo.link_time_us(stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]) / 1e3
    return ms, stats[:, 0], stats[:, 1]


def run_virtual(cfg: ReplayConfig, progress: Callable[[int], None] | None = None,
                device: torch.device | None = None) -> tuple[list[dict], str, str]:
    """Replay every case with all ranks in this process. Returns (case reports, device, timer name).
    ``progress(run)`` is called after each step (of every placement); ``device``: ``preflight(cfg)``'s answer
    when the caller checked already."""
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_virtual(cfg, progress or (lambda run: None), device or preflight(cfg))
    finally:
        torch.set_num_threads(before)


class _Measure:
    """One placement's arrays over S measured steps, L layers, G ranks (see ``CaseMeasure``)."""

    def __init__(self, S: int, L: int, G: int) -> None:
        z = np.zeros
        self.disp, self.comp, self.comb, self.tokens = z((S, L, G)), z((S, L, G)), z((S, L, G)), z((S, L, G))
        self.ret, self.b_in, self.b_out = z((S, G)), z((S, L + 1, G)), z((S, L + 1, G))
        self.layer_ms, self.step_ms = z((S, L)), z(S)
        self.outputs: dict[int, list] = {}

    def case_measure(self) -> CaseMeasure:
        return CaseMeasure(layer_ms_SL=self.layer_ms, step_ms_S=self.step_ms, dispatch_ms_SLG=self.disp,
                           compute_ms_SLG=self.comp, combine_ms_SLG=self.comb, return_ms_SG=self.ret,
                           bytes_intra_SXG=self.b_in, bytes_inter_SXG=self.b_out, tokens_SLG=self.tokens)


def weight_bytes(cfg: ReplayConfig, source) -> int:
    """Bytes of expert weights the virtual backend keeps on its device: every distinct expert of the replayed
    layers that some placement uses, once."""
    keys = {source.key(l, int(e)) for c in cfg.cases for l in range(cfg.num_layers) for e in c.placement.phy2log_LP[l]}
    return len(keys) * 3 * cfg.hidden * cfg.ffn * torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()


def _run_virtual(cfg: ReplayConfig, progress: Callable[[int], None],
                 device: torch.device) -> tuple[list[dict], str, str]:
    source = cfg.expert_source()
    G, S, L = cfg.world_size, cfg.steps, cfg.num_layers
    routing = load_routing(cfg.trace, cfg.num_tokens, cfg.num_layers)
    sched = cfg.schedule
    dt = DTYPES[cfg.dtype]
    timer = Timer(device, compute_clock=True)
    nodes = cfg.node_of_rank()
    row_bytes = cfg.hidden * torch.empty((), dtype=dt).element_size()
    topo = cfg.topology or Topology(num_gpus=G, num_nodes=cfg.nodes, hidden_size=cfg.hidden,
                                    dtype_bytes=torch.empty((), dtype=dt).element_size())
    cache = ExpertCache(source, dt, device)
    checker = Checker(routing, sched, source, cfg.hidden, cfg.dtype, cfg.seed, device)
    checked = set(sched.checked_steps(cfg.check))
    experts, meas = [], []
    for case in cfg.cases:
        P, spg = case.placement, case.placement.slots_per_gpu
        experts.append([[cache.slots(P.phy2log_LP[l], g * spg, spg, l) for l in range(L)] for g in range(G)])
        meas.append(_Measure(S, L, G))
    for ps in planned_steps(sched, cfg.cases, routing, cfg.seed, cfg.hidden):
        plan, i, m = ps.plan, ps.step, meas[ps.case_index]
        bufs = [ps.h0[torch.from_numpy(plan.home_tokens[g])].to(dt).to(device) for g in range(G)]
        bufs, marks, tokens = _step(plan, bufs, experts[ps.case_index], dt, device, timer)
        if ps.measured:
            for l, ph, per in exchanges_of(plan):
                ms, bi, bx = modelled_ms(per, topo, row_bytes, nodes)
                m.b_in[i, l] += bi
                m.b_out[i, l] += bx
                if ph == "return":
                    m.ret[i] = ms
                else:
                    (m.disp if ph == "dispatch" else m.comb)[i, l] = ms
            for l, g, s0, s1 in marks:
                m.comp[i, l, g] = timer.elapsed_ms(s0, s1)
            m.tokens[i] = tokens
            m.layer_ms[i] = m.disp[i].max(axis=1) + m.comp[i].max(axis=1) + m.comb[i].max(axis=1)
            m.step_ms[i] = m.layer_ms[i].sum() + m.ret[i].max()
            if i in checked:
                m.outputs[i] = [(plan.home_tokens[g] + ps.start, bufs[g].float()) for g in range(G)]
        if ps.case_index == len(cfg.cases) - 1:
            progress(ps.run)
    results = [case_report(case, m.case_measure(), checker.check(m.outputs), nodes, cfg.moe_layer_indices[:L])
               for case, m in zip(cfg.cases, meas)]
    return results, str(device), timer.name


def _step(plan, bufs: list[torch.Tensor], experts: list, dt: torch.dtype, device: torch.device, timer: Timer):
    """One step of every rank; returns the final buffers, the compute marks (layer, rank, start, end) and the
    [L, G] (token, expert) pairs computed."""
    G = len(bufs)
    timer.reset()
    marks, tokens = [], np.zeros((len(plan.layers), G))
    for l, lp in enumerate(plan.layers):
        bufs = exchange_all([TExchange.of(e, device) for e in lp.dispatch], bufs, f"layer {l} dispatch")
        tc = [TCompute.of(c, dt, device) for c in lp.compute]
        new = []
        for g in range(G):
            # Each rank's experts alone on the device: its own start and end marks.
            s0 = timer.mark()
            new.append(compute(tc[g], bufs[g], experts[g][l]))
            marks.append((l, g, s0, timer.mark()))
            tokens[l, g] = tc[g].tokens_computed
        bufs = new
        if lp.combine is not None:
            bufs = exchange_all([TExchange.of(e, device) for e in lp.combine], bufs, f"layer {l} combine")
    if plan.final is not None:
        bufs = exchange_all([TExchange.of(e, device) for e in plan.final], bufs, "return home")
    timer.synchronize()
    return bufs, marks, tokens
