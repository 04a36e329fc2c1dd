"""What the cost model predicts for a replay, to set beside what the replay measured.

The prediction runs ``placer.core.cost`` (docs/cost-model.md) on exactly what the replay ran: the same
placements (their first ``num_layers`` layers, on the replay's nodes), the same measured steps (the same
tokens, with their trace indices for the replica rule) and the same topology (``ReplayConfig.topology``:
the replay's layer shape on the hardware of ``--topology``). Its step time is the cost model's per-step
time: per layer, the slowest GPU's expert time (``Topology.expert_time_us`` summed over its slots) plus the
two communication phases, summed over layers.
"""

from __future__ import annotations

import numpy as np

from placer.core.cost import TraceEvaluator
from placer.core.placement import Placement
from placer.core.trace.schema import RoutingBatch
from placer.replay.config import ReplayConfig
from placer.replay.reference import Routing, load_routing


def predict_cases(cfg: ReplayConfig, routing: Routing | None = None) -> list[dict]:
    """Per case, in order: the cost model's mean step time and its compute and communication per layer (ms)."""
    if routing is None:
        routing = load_routing(cfg.trace, cfg.num_tokens, cfg.num_layers)
    sched, L, S = cfg.schedule, cfg.num_layers, cfg.steps
    out = []
    for case in cfg.cases:
        p = case.placement
        layers = Placement(p.phy2log_LP[:L], num_gpus=p.num_gpus, num_experts=p.num_experts, num_nodes=cfg.nodes)
        ev = TraceEvaluator(layers, cfg.topology, case.mode, name=case.name)
        for i in range(S):
            a, b = sched.token_range(i)
            pres = None if routing.present_TL is None else routing.present_TL[a:b]
            ev.add(RoutingBatch(experts_TLK=routing.experts_TLK[a:b], present_TL=pres, seq_T=routing.seq_T[a:b]),
                   first_token=a)
            ev.close_step()
        r = ev.result()
        out.append({
            "step_ms": r.total_us / S / 1e3,
            "compute_ms_per_layer": float(r.compute_us_L.sum()) / S / L / 1e3,
            "comm_ms_per_layer": float(r.comm_us_L.sum()) / S / L / 1e3,
        })
    return out


def rank_correlation(a, b) -> float | None:
    """Spearman's rank correlation of two sequences (ties get their mean rank); None for fewer than 3 pairs
    or a sequence with every value equal."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size != b.size:
        raise ValueError(f"rank_correlation: {a.size} values against {b.size}")
    if a.size < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(x.size)
    r[order] = np.arange(x.size, dtype=np.float64)
    for v in np.unique(x):  # ties share their mean rank
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r
