"""What a person wants to know about routing, from ``RoutingStats`` (pure functions, JSON-ready output).

Per layer l (from ``load_LE``):

- **imbalance**: max / mean expert load (1 = perfectly even); **cv**: standard deviation / mean of the loads;
- **entropy** of the load distribution p_e = load_e / sum, in bits (log2 E when even).

Per adjacent layer pair l -> l+1 (need co-activation and transition counts):

- **mutual information** (bits) between the token's top-1 expert at l and at l+1: the plug-in estimate
  from ``trans1_LEE[l]`` (0 when the next layer's choice is independent of this one's);
- **concentration@m**: the share of all (i at l, j at l+1) transition pairs of ``trans_LEE[l]`` whose j is
  among the m most frequent successors of i, i.e. each expert's top-m successor share, weighted by how often
  it is a source; m / E if successors were uniform, 1 if every expert always hands over to the same m;
- **predictability@m**: over a sample of tokens present at l and l+1, the share of the token's K experts at
  l+1 that are among the m experts j with the highest ``sum over its experts i at l of trans_LEE[l, i, j]``
  (what an expert prefetcher such as Pre-gated MoE, ExpertFlow or EdgeMoE exploits). Beside it the
  **popularity baseline**: the share that are among the m most loaded experts of l+1, with no affinity.
  The table is learned from the same tokens it is tested on (in-sample); with many tokens per table cell
  the difference is small. Needs the tokens (a trace), not only counts: ``None`` for merged or load-only
  statistics.

m defaults to top-k. Values that cannot be computed (a layer without tokens) are ``None``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from placer.core.stats.core import RoutingStats
from placer.core.stats.fast import next_layer_hits


def _f(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _fl(a: np.ndarray) -> list[float | None]:
    return [_f(v) for v in a]


def load_figures(load_LE: np.ndarray) -> dict[str, np.ndarray]:
    """Per-layer imbalance (max/mean), coefficient of variation and entropy (bits) of the expert loads."""
    load = load_LE.astype(np.float64)
    total = load.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = load.mean(axis=1)
        imbalance = load.max(axis=1) / mean
        cv = load.std(axis=1) / mean
        p = load / total[:, None]
        plogp = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
        entropy = np.where(total > 0, -plogp.sum(axis=1), np.nan)
    return {"imbalance": imbalance, "cv": cv, "entropy_bits": entropy}


def mutual_information_bits(joint_EE: np.ndarray) -> float:
    """Plug-in mutual information (bits) of a joint count table; NaN when it is empty."""
    n = joint_EE.sum()
    if n <= 0:
        return float("nan")
    p = joint_EE.astype(np.float64) / n
    pr, pc = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pr @ pc)[nz])).sum())


def concentration(trans_EE: np.ndarray, m: int) -> float:
    """Share of transition pairs whose target is among its source's m most frequent successors."""
    total = trans_EE.sum()
    if total <= 0:
        return float("nan")
    m = min(m, trans_EE.shape[1])
    top = -np.partition(-trans_EE, m - 1, axis=1)[:, :m]
    return float(top.sum() / total)


def predictability(s: RoutingStats, m: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(predictability_L1, popularity_baseline_L1, sampled tokens) over ``s.sample``; None without one."""
    if s.sample is None or s.load_only or s.num_layers < 2 or len(s.sample) == 0:
        return None
    b = s.sample
    L, E, K = s.shape
    hits, pop, pairs = (np.zeros(L - 1, dtype=np.int64) for _ in range(3))
    present = b.present_TL if b.present_TL is not None else np.ones((1, 1), dtype=np.bool_)
    next_layer_hits(np.ascontiguousarray(b.experts_TLK), np.ascontiguousarray(present), b.present_TL is not None,
                    s.trans_LEE, s.load_LE, min(m, E), hits, pop, pairs)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / (pairs * K), pop / (pairs * K), len(b)


def _mean(a) -> float | None:
    a = np.asarray([np.nan if v is None else v for v in a], dtype=np.float64)
    return _f(np.nanmean(a)) if np.isfinite(a).any() else None


def summarize(s: RoutingStats, top_m: int | None = None, splits: bool = True) -> dict[str, Any]:
    """All summary figures of ``s`` (and of each split) as a JSON-ready dict."""
    L, E, K = s.shape
    m = int(top_m) if top_m else K
    lf = load_figures(s.load_LE)
    out: dict[str, Any] = {
        "model_name": s.model_name,
        "sources": list(s.sources),
        "num_layers": L, "num_experts": E, "top_k": K,
        "top_k_known": bool(s.extra.get("top_k_known", True)),
        "tokens": int(s.tokens),
        "load_only": s.load_only,
        "top_m": m,
        "layers": {
            "model_layer": list(s.moe_layer_indices) or list(range(L)),
            "tokens": None if s.tokens_L is None else [int(v) for v in s.tokens_L],
            "imbalance": _fl(lf["imbalance"]),
            "cv": _fl(lf["cv"]),
            "entropy_bits": _fl(lf["entropy_bits"]),
        },
    }
    overall: dict[str, Any] = {
        "imbalance_mean": _mean(lf["imbalance"]),
        "imbalance_max": _f(np.nanmax(lf["imbalance"])) if np.isfinite(lf["imbalance"]).any() else None,
        "cv_mean": _mean(lf["cv"]), "entropy_bits_mean": _mean(lf["entropy_bits"]),
        "entropy_bits_uniform": _f(np.log2(E)),
        "concentration_uniform": _f(min(m, E) / E),
    }
    if not s.load_only and L > 1:
        mi = [mutual_information_bits(s.trans1_LEE[l]) for l in range(L - 1)]
        conc = [concentration(s.trans_LEE[l], m) for l in range(L - 1)]
        pairs = {"mutual_information_bits": _fl(np.array(mi)), "concentration": _fl(np.array(conc)),
                 "pair_tokens": [int(v) for v in s.pair_tokens_L]}
        overall.update(mutual_information_bits_mean=_mean(pairs["mutual_information_bits"]),
                       concentration_mean=_mean(pairs["concentration"]))
        pred = predictability(s, m)
        if pred is not None:
            pairs["predictability"], pairs["predictability_popularity"] = _fl(pred[0]), _fl(pred[1])
            overall.update(predictability_mean=_mean(pairs["predictability"]),
                           predictability_popularity_mean=_mean(pairs["predictability_popularity"]),
                           predictability_sample_tokens=pred[2])
        out["pairs"] = pairs
    out["overall"] = overall
    if s.extra.get("notes"):
        out["notes"] = list(s.extra["notes"])
    if splits and s.splits:
        out["split_by"] = s.extra.get("split_by")
        out["splits"] = {n: summarize(sub, top_m=m, splits=False) for n, sub in s.splits.items()}
    return out
