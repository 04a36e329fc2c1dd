"""Synthetic routing traces with known, planted structure.

The generative model, per token and MoE layer (all draws from one seeded NumPy generator, so the same
config gives the same trace byte for byte):

1. **Popularity.** Each layer has a Zipf popularity over its experts, ``p(rank r) ~ 1 / (r + 1) ** zipf``,
   over a random permutation of the experts. Each domain re-shuffles a share ``domain_shift`` of that
   permutation, so domains prefer different experts (a sequence belongs to one domain).
2. **Planted clusters** (``clusters = C > 0``). Each layer's experts are split into C groups (a random
   permutation cut into near-equal parts). Every token belongs to one cluster c (drawn from its domain's
   cluster preferences). At every layer each of its K picks comes, with probability ``affinity``, from
   group c of that layer (popularity-weighted inside the group); so experts of a group co-activate inside
   a layer and the group chains to group c of the next layer.
3. **Affinity without clusters** (``clusters = 0``). Layer l+1's k-th pick is, with probability
   ``affinity``, the planted successor ``successor_LE[l, e]`` of the token's k-th expert e at layer l.
4. All other picks are drawn from the popularity of the token's domain. A pick that repeats one of the
   token's earlier picks is re-drawn (from the same source first, then from popularity), so the K experts
   are distinct.
5. Gate weights are sorted exponential draws normalised to sum to one (rank 0 has the largest weight).
6. ``drop_rate`` marks token-layers as missing (as routing logs drop rows), for testing.
7. **Drift** (``drift > 0``): traffic that changes over time, as serving traffic does. The sequences are cut
   into ``drift_periods`` consecutive periods. From one period to the next, every layer's popularity order
   re-shuffles a share ``drift`` of its experts (so the hot experts change, cumulatively), and each period
   draws its own domain mix (a Dirichlet draw over the domains), so the mix of workloads changes too. (Picks
   that follow a planted cluster keep the first period's popularity inside their cluster.)

Tokens come in sequences of ``seq_len``; the last ``decode_fraction`` of each sequence is marked decode.
The planted structure is stored in the trace metadata under ``extra["planted"]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
from numba import njit

from placer.core.errors import require_positive_ints
from placer.core.limits import MAX_DOMAINS, MAX_EXPERTS, MAX_LAYERS, MAX_SEQ_LEN, require_at_most
from placer.core.trace.schema import PHASE_DECODE, PHASE_PREFILL, RoutingBatch, TraceMeta

CHUNK = 16384  # tokens generated at a time; fixed so that output does not depend on any option


@dataclass(frozen=True)
class SynthConfig:
    layers: int
    experts: int
    top_k: int
    tokens: int
    seed: int = 0
    zipf: float = 1.0
    affinity: float = 0.6
    clusters: int = 0
    domains: int = 1
    domain_shift: float = 0.5
    seq_len: int = 256
    decode_fraction: float = 0.25
    drop_rate: float = 0.0
    drift: float = 0.0
    drift_periods: int = 8

    def __post_init__(self) -> None:
        require_positive_ints(self, ("layers", "experts", "top_k", "tokens", "domains", "seq_len", "drift_periods"))
        require_at_most("layers", self.layers, MAX_LAYERS, "layers of a model")
        require_at_most("experts", self.experts, MAX_EXPERTS, "expert ids are stored as uint32")
        require_at_most("domains", self.domains, MAX_DOMAINS, "the domain column is int16")
        require_at_most("seq_len", self.seq_len, MAX_SEQ_LEN, "positions are int32")
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed experts ({self.experts})")
        if self.clusters < 0 or self.clusters > self.experts:
            raise ValueError(f"clusters ({self.clusters}) must be between 0 and experts ({self.experts})")
        if not 0 <= self.zipf < float("inf"):  # NaN fails this too
            raise ValueError(f"zipf ({self.zipf}) must be a finite number >= 0")
        for name in ("affinity", "domain_shift", "decode_fraction", "drift"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} ({v}) must be between 0 and 1")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate ({self.drop_rate}) must be in [0, 1)")
        if self.seed < 0:
            raise ValueError(f"seed ({self.seed}) must be >= 0")


@dataclass(frozen=True)
class Planted:
    """The structure a synthetic trace was drawn from.

    popularity_DLE: [D, L, E] expert popularity per domain and layer (rows sum to 1), in the first period
    drift_popularity_PDLE / domain_mix_PD: with drift, [P, D, L, E] popularity and [P, D] domain mix per period
    cluster_LE:     [L, E] planted cluster of each expert (only with clusters > 0)
    successor_LE:   [L-1, E] planted successor at layer l+1 of expert e at layer l (only with clusters == 0)
    """

    popularity_DLE: np.ndarray
    cluster_LE: np.ndarray | None
    successor_LE: np.ndarray | None
    cluster_pref_DC: np.ndarray | None
    drift_popularity_PDLE: np.ndarray | None = None
    domain_mix_PD: np.ndarray | None = None

    def to_meta(self) -> dict:
        d: dict = {}
        if self.domain_mix_PD is not None:
            d["domain_mix_PD"] = np.round(self.domain_mix_PD, 6).tolist()
        if self.cluster_LE is not None:
            d["cluster_LE"] = self.cluster_LE.tolist()
        if self.successor_LE is not None:
            d["successor_LE"] = self.successor_LE.tolist()
        return d


def _cdf(probs: np.ndarray) -> np.ndarray:
    """Row-wise cumulative distributions (last entry exactly 1) of a [rows, n] probability table."""
    probs = np.asarray(probs, dtype=np.float64)
    cdf = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
    cdf[..., -1] = 1.0
    return cdf


@njit(cache=True)
def _search(cdf_row, u):
    lo, hi = 0, cdf_row.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf_row[mid] > u:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _draw_layer(out_TK, prev_TK, row_T, clus_T, pop_cdf_XE, grp_cdf_CS, grp_members_CS, successor_E,
                u_pick, u_coh, u_extra, affinity):
    """One layer's K distinct picks for every token (see the module docstring for the model); a popularity
    pick of token t uses row ``row_T[t]`` of ``pop_cdf_XE`` (its domain, and with drift its period).

    A duplicate pick is re-drawn with the token's spare uniforms ``u_extra``: from the same source first
    (a cluster pick stays in its cluster), then from popularity; if they run out, the lowest unused id.
    """
    T, K = out_TK.shape
    E = pop_cdf_XE.shape[1]
    spare_n = u_extra.shape[1]
    for t in range(T):
        spare = 0
        for k in range(K):
            coherent = affinity > 0.0 and u_coh[t, k] < affinity
            u = u_pick[t, k]
            tries = 0
            while True:
                if coherent and grp_cdf_CS.shape[0] > 0:
                    c = clus_T[t]
                    e = grp_members_CS[c, _search(grp_cdf_CS[c], u)]
                elif coherent and prev_TK.shape[0] > 0:
                    e = successor_E[prev_TK[t, k]]
                else:
                    e = _search(pop_cdf_XE[row_T[t]], u)
                dup = False
                for j in range(k):
                    if out_TK[t, j] == e:
                        dup = True
                        break
                if not dup:
                    break
                # A duplicate: draw again from the same source (a cluster draw stays in its cluster), then,
                # after half the spare draws, from popularity; with none left, the lowest unused id.
                tries += 1
                if spare >= spare_n:
                    e = 0
                    while True:
                        taken = False
                        for j in range(k):
                            if out_TK[t, j] == e:
                                taken = True
                                break
                        if not taken:
                            break
                        e += 1
                    break
                if tries > spare_n // 2 or (coherent and grp_cdf_CS.shape[0] == 0):
                    coherent = False
                u = u_extra[t, spare]
                spare += 1
            out_TK[t, k] = e


def _zipf_popularity(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    E, L, D = cfg.experts, cfg.layers, cfg.domains
    weights = 1.0 / np.arange(1, E + 1, dtype=np.float64) ** cfg.zipf
    pop = np.empty((D, L, E))
    for l in range(L):
        base = rng.permutation(E)
        for d in range(D):
            perm = base.copy()
            if d > 0 and cfg.domain_shift > 0:
                moved = rng.choice(E, size=int(round(cfg.domain_shift * E)), replace=False)
                perm[moved] = perm[rng.permutation(moved)]
            pop[d, l, perm] = weights
    return pop / pop.sum(axis=2, keepdims=True)


def _drift(cfg: SynthConfig, pop_DLE: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """([P, D, L, E] popularity, [P, D] domain mix) per period: period 0 is ``pop_DLE``; each next period
    permutes a share ``drift`` of every layer's experts among themselves (the same experts move for every
    domain, so what is hot for all of them changes)."""
    P, D, L, E = cfg.drift_periods, cfg.domains, cfg.layers, cfg.experts
    pop = np.empty((P, D, L, E))
    pop[0] = pop_DLE
    moved_n = int(round(cfg.drift * E))
    for p in range(1, P):
        pop[p] = pop[p - 1]
        for l in range(L):
            moved = rng.choice(E, size=moved_n, replace=False)
            pop[p, :, l, moved] = pop[p - 1, :, l, rng.permutation(moved)]
    mix = rng.dirichlet(np.ones(D), size=P) if D > 1 else np.ones((P, 1))
    return pop, mix


def plant(cfg: SynthConfig, rng: np.random.Generator) -> Planted:
    """Draw the hidden structure of a synthetic trace (popularity, clusters or successors, drift)."""
    pop = _zipf_popularity(cfg, rng)
    E, L, C = cfg.experts, cfg.layers, cfg.clusters
    cluster = successor = pref = None
    if C > 0:
        cluster = np.empty((L, E), dtype=np.int32)
        for l in range(L):
            cluster[l, rng.permutation(E)] = np.arange(E) * C // E
        pref = rng.dirichlet(np.full(C, 2.0), size=cfg.domains)
    elif L > 1:
        successor = np.stack([rng.permutation(E) for _ in range(L - 1)]).astype(np.int32)
    drift_pop = mix = None
    if cfg.drift > 0:
        drift_pop, mix = _drift(cfg, pop, rng)
    return Planted(pop, cluster, successor, pref, drift_pop, mix)


def generate(cfg: SynthConfig) -> tuple[TraceMeta, Iterator[RoutingBatch]]:
    """The metadata and a lazy stream of batches (at most ``CHUNK`` tokens each) of a synthetic trace."""
    rng = np.random.default_rng(cfg.seed)
    planted = plant(cfg, rng)
    L, E, K, C, D = cfg.layers, cfg.experts, cfg.top_k, cfg.clusters, cfg.domains
    n_seqs = math.ceil(cfg.tokens / cfg.seq_len)
    # One int16 domain per sequence is all that is kept per sequence (2 bytes per seq_len tokens); the row of
    # the popularity table each token uses is computed chunk by chunk.
    P = cfg.drift_periods if planted.domain_mix_PD is not None else 1
    if planted.domain_mix_PD is None:
        # integers(0, 1) draws nothing: with one domain no per-sequence array is drawn at all.
        seq_domain = (rng.integers(0, D, size=n_seqs).astype(np.int16) if D > 1
                      else np.zeros(n_seqs, dtype=np.int16))
        popularity_XLE = planted.popularity_DLE
    else:
        # With drift, period p of the sequences draws its domains from its own mix, and row p * D + d of the
        # table is domain d's popularity in period p. The uniforms are drawn in pieces (the same numbers).
        seq_domain = np.empty(n_seqs, dtype=np.int16)
        cum_PD = np.cumsum(planted.domain_mix_PD, axis=1)
        for lo in range(0, n_seqs, CHUNK):
            hi = min(lo + CHUNK, n_seqs)
            u = rng.random(hi - lo)
            period = np.arange(lo, hi) * P // n_seqs
            for p in np.unique(period):
                mine = period == p
                seq_domain[lo:hi][mine] = np.minimum(np.searchsorted(cum_PD[p], u[mine], side="right"), D - 1)
        popularity_XLE = planted.drift_popularity_PDLE.reshape(P * D, L, E)
    decode_from = cfg.seq_len - int(round(cfg.decode_fraction * cfg.seq_len))

    pop_cdf_LDE = np.ascontiguousarray(_cdf(popularity_XLE).transpose(1, 0, 2))
    no_groups_CS = np.zeros((0, 1))
    no_members_CS = np.zeros((0, 1), dtype=np.int64)
    no_successor = np.zeros(1, dtype=np.int64)
    grp_cdf_LCS = grp_members_LCS = pref_cdf_DC = None
    if C > 0:
        size = -(-E // C)  # largest group; smaller groups are padded with zero-probability members
        grp_members_LCS = np.zeros((L, C, size), dtype=np.int64)
        gprobs = np.zeros((L, C, size))
        mean_pop = planted.popularity_DLE.mean(axis=0)
        for l in range(L):
            for c in range(C):
                members = np.nonzero(planted.cluster_LE[l] == c)[0]
                grp_members_LCS[l, c, : members.size] = members
                gprobs[l, c, : members.size] = mean_pop[l, members]
        grp_cdf_LCS = _cdf(gprobs)
        pref_cdf_DC = _cdf(planted.cluster_pref_DC)

    meta = TraceMeta(
        num_layers=L,
        num_experts=E,
        top_k=K,
        model_name=f"synthetic-{L}x{E}-top{K}",
        model_family="synthetic",
        source="moeplace synth",
        extra={"synth": asdict(cfg), "planted": planted.to_meta()},
    )

    def batches() -> Iterator[RoutingBatch]:
        for start in range(0, cfg.tokens, CHUNK):
            n = min(CHUNK, cfg.tokens - start)
            idx = np.arange(start, start + n, dtype=np.int64)
            seq = idx // cfg.seq_len
            pos = (idx % cfg.seq_len).astype(np.int32)
            dom = seq_domain[seq].astype(np.int64)
            table = (seq * P // n_seqs) * D + dom  # the popularity row: period * D + domain (period 0 without drift)
            experts = np.empty((n, L, K), dtype=np.int64)
            clus = np.zeros(n, dtype=np.int64)
            if C > 0:
                u = rng.random(n)
                for d in range(D):
                    mine = dom == d
                    clus[mine] = np.searchsorted(pref_cdf_DC[d], u[mine], side="right")
                clus = np.minimum(clus, C - 1)
            for l in range(L):
                u_pick, u_coh = rng.random((n, K)), rng.random((n, K))
                u_extra = rng.random((n, 2 * K))
                if C > 0:
                    grp_cdf, members, prev, succ = grp_cdf_LCS[l], grp_members_LCS[l], experts[:0, 0, :], no_successor
                else:
                    grp_cdf, members = no_groups_CS, no_members_CS
                    prev = experts[:, l - 1, :] if l > 0 else experts[:0, 0, :]
                    succ = planted.successor_LE[l - 1].astype(np.int64) if l > 0 else no_successor
                out = np.empty((n, K), dtype=np.int64)
                _draw_layer(out, prev, table, clus, pop_cdf_LDE[l], grp_cdf, members, succ,
                            u_pick, u_coh, u_extra, float(cfg.affinity))
                experts[:, l, :] = out
            w = np.sort(rng.exponential(size=(n, L, K)), axis=2)[:, :, ::-1]
            w /= w.sum(axis=2, keepdims=True)
            present = rng.random((n, L)) >= cfg.drop_rate if cfg.drop_rate > 0 else None
            yield RoutingBatch(
                experts_TLK=experts.astype(meta.id_dtype),
                weights_TLK=w.astype(np.float32),
                present_TL=present,
                seq_T=seq,
                position_T=pos,
                phase_T=np.where(pos >= decode_from, PHASE_DECODE, PHASE_PREFILL).astype(np.int8),
                domain_T=dom.astype(np.int16),
            )

    return meta, batches()
