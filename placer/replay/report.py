"""What a replay measured, per placement, and the report that compares placements.

Times are per measured step (means over steps) unless named ``total`` or ``median``; bytes are hidden-state rows sent
between different ranks (the count exchange and a rank's rows to itself are not counted), summed over the
measured steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.table import Table

REPORT_FORMAT = "moeplace-replay-report"
REPORT_VERSION = 1


@dataclass
class CaseMeasure:
    """Raw measurements of one placement over S measured steps, L layers, G ranks.

    layer_ms_SL / step_ms_S: the time of each layer / step (the slowest rank sets it).
    dispatch_ms_SLG, compute_ms_SLG, combine_ms_SLG: each rank's phases of each layer (combine is 0 in
    coherent mode); return_ms_SG: coherent mode's final exchange home.
    bytes_intra_SXG / bytes_inter_SXG: bytes each rank sent inside its node / to other nodes, X = L + 1
    (entry L is the final exchange home). tokens_SLG: (token, expert) pairs each rank computed.
    """

    layer_ms_SL: np.ndarray
    step_ms_S: np.ndarray
    dispatch_ms_SLG: np.ndarray
    compute_ms_SLG: np.ndarray
    combine_ms_SLG: np.ndarray
    return_ms_SG: np.ndarray
    bytes_intra_SXG: np.ndarray
    bytes_inter_SXG: np.ndarray
    tokens_SLG: np.ndarray

    @classmethod
    def from_ranks(cls, per_rank: list[dict]) -> "CaseMeasure":
        """Stack the [S, L] arrays each rank measured (distributed backends); the slowest rank sets the pace."""
        st = lambda k: np.stack([np.asarray(r[k], dtype=np.float64) for r in per_rank], axis=-1)  # noqa: E731
        d, c, b = st("dispatch_ms"), st("compute_ms"), st("combine_ms")
        return cls(layer_ms_SL=(d + c + b).max(axis=2), step_ms_S=st("step_ms").max(axis=1),
                   dispatch_ms_SLG=d, compute_ms_SLG=c, combine_ms_SLG=b, return_ms_SG=st("return_ms"),
                   bytes_intra_SXG=st("bytes_intra"), bytes_inter_SXG=st("bytes_inter"), tokens_SLG=st("tokens"))


def _r(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


def summarize_case(m: CaseMeasure, node_of_rank: np.ndarray, model_layers: tuple[int, ...] | None) -> dict:
    """The per-placement measurement section of the report."""
    S, L, G = m.compute_ms_SLG.shape
    comp_max_SL = m.compute_ms_SLG.max(axis=2)
    comp_mean_SL = m.compute_ms_SLG.mean(axis=2)
    bytes_SXG = m.bytes_intra_SXG + m.bytes_inter_SXG
    layers = []
    for l in range(L):
        layers.append({
            "layer": l,
            "model_layer": None if model_layers is None else int(model_layers[l]),
            "time_ms": _r(m.layer_ms_SL[:, l].mean()),
            "dispatch_ms": _r(m.dispatch_ms_SLG[:, l].max(axis=1).mean()),
            "compute_max_ms": _r(comp_max_SL[:, l].mean()),
            "compute_mean_ms": _r(comp_mean_SL[:, l].mean()),
            "combine_ms": _r(m.combine_ms_SLG[:, l].max(axis=1).mean()),
            "bytes_sent": int(bytes_SXG[:, l].sum() // S),
            "tokens_computed_max": _r(m.tokens_SLG[:, l].max(axis=1).mean(), 1),
            "tokens_computed_mean": _r(m.tokens_SLG[:, l].mean(axis=1).mean(), 1),
        })
    ranks = []
    for g in range(G):
        ranks.append({
            "rank": g, "node": int(node_of_rank[g]),
            "tokens_computed": int(m.tokens_SLG[:, :, g].sum()),
            "compute_ms": _r(m.compute_ms_SLG[:, :, g].sum()),
            "bytes_sent": int(bytes_SXG[:, :, g].sum()),
            "bytes_intra_node": int(m.bytes_intra_SXG[:, :, g].sum()),
            "bytes_inter_node": int(m.bytes_inter_SXG[:, :, g].sum()),
        })
    straggler = float(comp_max_SL.mean())
    mean = float(comp_mean_SL.mean())
    return {
        "total_ms": _r(m.step_ms_S.sum()),
        "step_ms": _r(m.step_ms_S.mean()),
        "step_ms_median": _r(np.median(m.step_ms_S)),
        "compute_straggler_ms_per_layer": _r(straggler),
        "compute_mean_ms_per_layer": _r(mean),
        "compute_imbalance": _r(straggler / mean if mean > 0 else 1.0),
        "return_ms": _r(m.return_ms_SG.max(axis=1).mean()),
        "bytes_sent": int(bytes_SXG.sum()),
        "bytes_intra_node": int(m.bytes_intra_SXG.sum()),
        "bytes_inter_node": int(m.bytes_inter_SXG.sum()),
        "tokens_computed_max_rank": int(m.tokens_SLG.sum(axis=(0, 1)).max()),
        "layers": layers,
        "ranks": ranks,
    }


def add_speedups(cases: list[dict]) -> None:
    """Each placement's speedup over the first, measured in the same run: the first's median step time over
    its own (steps interleave the placements; the median is robust to a step hit by other load)."""
    base = cases[0]["step_ms_median"]
    for c in cases:
        c["speedup_vs_first"] = _r(base / c["step_ms_median"], 3) if c["step_ms_median"] > 0 else None
        c["compute_straggler_speedup_vs_first"] = _r(
            cases[0]["compute_straggler_ms_per_layer"] / c["compute_straggler_ms_per_layer"], 3
        ) if c["compute_straggler_ms_per_layer"] > 0 else None


def add_predictions(cases: list[dict], predicted: list[dict]) -> dict:
    """Put the cost model's prediction beside each placement's measurement (in place) and return the report's
    ``prediction`` summary: the rank correlation of predicted and measured speedups over the first placement,
    and the largest errors. Errors are predicted / measured - 1."""
    # lazy: placer.replay.predict imports torch and numba
    from placer.replay.predict import rank_correlation

    base = predicted[0]["step_ms"]
    for c, p in zip(cases, predicted):
        c["predicted_step_ms"] = _r(p["step_ms"])
        c["predicted_compute_ms_per_layer"] = _r(p["compute_ms_per_layer"])
        c["predicted_comm_ms_per_layer"] = _r(p["comm_ms_per_layer"])
        c["predicted_speedup_vs_first"] = _r(base / p["step_ms"], 3) if p["step_ms"] > 0 else None
        c["step_error"] = _r(p["step_ms"] / c["step_ms_median"] - 1, 4) if c["step_ms_median"] > 0 else None
        c["speedup_error"] = (_r(c["predicted_speedup_vs_first"] / c["speedup_vs_first"] - 1, 4)
                              if c["predicted_speedup_vs_first"] and c["speedup_vs_first"] else None)
    pairs = [(c["predicted_speedup_vs_first"], c["speedup_vs_first"]) for c in cases
             if c["predicted_speedup_vs_first"] is not None and c["speedup_vs_first"] is not None]
    rho = rank_correlation([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
    worst = lambda key: max((abs(c[key]) for c in cases if c[key] is not None), default=None)  # noqa: E731
    return {"rank_correlation": None if rho is None else _r(rho, 4), "placements": len(cases),
            "max_abs_step_error": worst("step_error"), "max_abs_speedup_error": worst("speedup_error")}


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def report_table(report: dict):
    """A rich table comparing the placements of a report (everything else is in the JSON)."""
    comm = "modelled" if report["communication"] != "measured" else "measured"
    t = Table(title=(f"replay: {report['backend']}, {report['world_size']} ranks, {report['mode']}, "
                     f"{report['tokens_replayed']:,} tokens x {report['num_layers']} layers, {report['dtype']}, "
                     f"communication {comm}"), title_justify="left",
              caption="correct: every token matches the single-process reference; step: median step time; "
                      "straggler: slowest rank's expert time per layer; speedup: over the first placement, "
                      "same run; predicted: the cost model on the same steps and topology (docs/cost-model.md)",
              caption_justify="left")
    inter = report["nodes"] > 1
    predicted = "predicted_step_ms" in report["placements"][0]
    t.add_column("placement", overflow="fold")
    for col in (("correct", "step ms", "straggler ms", "MB sent") + (("MB inter-node",) if inter else ()) + ("speedup",)
                + (("predicted ms", "predicted speedup") if predicted else ())):
        t.add_column(col, justify="right")
    for c in report["placements"]:
        chk = c["check"]
        if chk.get("tokens_checked", 0) == 0:
            ok = "not checked" if chk.get("correct", True) else "NO"
        else:
            ok = "yes" if chk["correct"] else f"NO: {chk['mismatched_tokens']}"
        row = [c["name"], ok, _ms(c["step_ms_median"]), _ms(c["compute_straggler_ms_per_layer"]),
               f"{c['bytes_sent'] / 1e6:.3g}"]
        if inter:
            row.append(f"{c['bytes_inter_node'] / 1e6:.3g}")
        row.append(f"{c['speedup_vs_first']:.2f}x" if c["speedup_vs_first"] is not None else "-")
        if predicted:
            row += [_ms(c["predicted_step_ms"]),
                    f"{c['predicted_speedup_vs_first']:.2f}x" if c["predicted_speedup_vs_first"] is not None else "-"]
        t.add_row(*row)
    return t


def case_report(case, measure: CaseMeasure, check: dict, node_of_rank: np.ndarray,
                model_layers: tuple[int, ...] | None) -> dict:
    """The report entry of one placement: what it is, its correctness check, its measurements."""
    p = case.placement
    return {
        "name": case.name,
        "path": case.path,
        "solver": p.report.solver,
        "status": p.report.status.value,
        "num_redundant": p.num_redundant,
        "solved_for_mode": p.report.mode.value,
        "mode": case.mode.value,
        "check": check,
        **summarize_case(measure, node_of_rank, model_layers),
    }


def build_report(cfg, backend: str, device: str, timer: str, cases: list[dict], wall_s: float,
                 weights: str, predicted: list[dict] | None = None) -> dict:
    """The whole report: the run's settings and each placement's entry, with speedups over the first and,
    given ``predicted`` (``placer.replay.predict.predict_cases``), the cost model's prediction beside them."""
    add_speedups(cases)
    prediction = add_predictions(cases, predicted) if predicted is not None else None
    modes = sorted({c["mode"] for c in cases})
    virtual = backend == "virtual"
    topo = cfg.topology
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "trace": str(cfg.trace),
        "backend": backend,
        "device": device,
        "world_size": cfg.world_size,
        "nodes": cfg.nodes,
        "mode": modes[0] if len(modes) == 1 else "mixed",
        "num_layers": cfg.num_layers,
        "num_experts": cfg.num_experts,
        "hidden": cfg.hidden,
        "ffn": cfg.ffn,
        "dtype": cfg.dtype,
        "weights": weights,
        "tokens_per_step": cfg.tokens_per_step,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "tokens_replayed": int(sum(b - a for a, b in (cfg.schedule.token_range(i) for i in range(cfg.steps)))),
        "timer": timer,
        "communication": ("modelled: bytes / bandwidth + latency per link class (Topology.link_time_us), "
                          f"{topo.intra_bw_gbs} GB/s intra-node, {topo.inter_bw_gbs} GB/s inter-node"
                          if virtual and topo is not None else "measured"),
        "layer_output": "h + sum_k w_k * FFN_k(RMSNorm(h)) (pre-norm and residual of a MoE block; no attention)",
        "wall_time_s": round(wall_s, 3),
        "correct": all(c["check"].get("correct", True) for c in cases),
        "topology": None if topo is None else {"source": cfg.extra.get("topology"), **topo.to_dict(),
                                               **({"warning": cfg.extra["topology_warning"]}
                                                  if cfg.extra.get("topology_warning") else {})},
        "prediction": prediction,
        "placements": cases,
    }
