"""``RoutingStats``: exact integer counts of how a model routes, the input of every solver.

Shapes (L MoE layers, E experts):

- ``load_LE``   [L, E]      (token, rank) entries routed to expert e at layer l: each token adds 1 to each of
  its K experts, so a layer's row sums to K x (tokens present at that layer).
- ``load1_LE``  [L, E]      the same for each token's top-1 (rank 0) expert only.
- ``coact_LEE`` [L, E, E]   tokens whose K experts at layer l include both i and j (symmetric); the diagonal
  holds ``load_LE`` (a token co-activates an expert with itself).
- ``trans_LEE`` [L-1, E, E] (token, i, j) with i among the token's experts at layer l and j among them at
  l+1, all K x K pairs, counted only where the token is present at both layers.
- ``trans1_LEE`` [L-1, E, E] the same for top-1 to top-1.
- ``tokens_L``  [L]         tokens present at layer l; ``pair_tokens_L`` [L-1]: present at l and l+1.

``load_only`` statistics (from a load matrix or an SGLang ``logical_count`` file) have only ``load_LE``;
anything that needs affinity must refuse them with a clear message (``require_affinity``). Their ``load_LE``
is int64 counts, or float64 when the file held real-valued loads (rates, averages: ``real_valued``), which
serve balance only.

``splits`` holds the same statistics per group of tokens (``--by phase``: "prefill", "decode"); the
top-level counts are their sum. ``sample`` (not saved) is a small, evenly spread sample of the tokens'
routing kept while streaming, for the token-level predictability figure of the summary.

``accumulate_reference`` is the specification (slow, obviously right); ``FastCounter`` (numba kernels in
``placer.core.stats.fast``) gives the same counts and is what ``compute_stats`` and the CLI use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from placer.core.errors import InputError
from placer.core.stats.fast import count_batch, symmetrize_coact
from placer.core.trace.schema import RoutingBatch, expert_dtype

# The count arrays of full statistics, in the order they are saved; all int64.
COUNT_FIELDS = ("load_LE", "load1_LE", "coact_LEE", "trans_LEE", "trans1_LEE", "tokens_L", "pair_tokens_L")


@dataclass
class RoutingStats:
    num_layers: int
    num_experts: int
    top_k: int
    load_LE: np.ndarray
    tokens: int = 0
    load1_LE: np.ndarray | None = None
    coact_LEE: np.ndarray | None = None
    trans_LEE: np.ndarray | None = None
    trans1_LEE: np.ndarray | None = None
    tokens_L: np.ndarray | None = None
    pair_tokens_L: np.ndarray | None = None
    model_name: str = "unknown"
    moe_layer_indices: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, "RoutingStats"] = field(default_factory=dict)
    sample: RoutingBatch | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.num_layers, self.num_experts, self.top_k)

    @property
    def load_only(self) -> bool:
        return self.trans_LEE is None or self.coact_LEE is None

    @property
    def real_valued(self) -> bool:
        """True if ``load_LE`` holds real-valued loads (rates, averages) rather than token counts."""
        return bool(np.issubdtype(self.load_LE.dtype, np.floating))

    def require_affinity(self, what: str) -> None:
        """Raise a InputError naming ``what`` if these statistics hold loads only."""
        if self.load_only:
            src = ", ".join(self.sources) or "these statistics"
            raise InputError(f"{what} needs co-activation and transition counts, but {src} holds expert loads "
                             f"only (a load matrix or an SGLang stat dump); give a trace or a full stats file")

    @classmethod
    def empty(cls, num_layers: int, num_experts: int, top_k: int, **kw: Any) -> "RoutingStats":
        L, E = num_layers, num_experts
        z = lambda *s: np.zeros(s, dtype=np.int64)  # noqa: E731
        return cls(L, E, top_k, load_LE=z(L, E), load1_LE=z(L, E), coact_LEE=z(L, E, E),
                   trans_LEE=z(max(L - 1, 0), E, E), trans1_LEE=z(max(L - 1, 0), E, E),
                   tokens_L=z(L), pair_tokens_L=z(max(L - 1, 0)), **kw)

    def add_batch(self, b: RoutingBatch) -> None:
        """Add the counts of one batch of tokens (reference NumPy implementation)."""
        accumulate_reference(self, b)

    def inconsistency(self) -> str | None:
        """What breaks the identities exact counts of tokens always satisfy (a tampered or corrupted stats
        file), or None: counts >= 0; a layer's load sums to K x its tokens, its top-1 load to its tokens;
        top-1 load <= load; co-activation symmetric with the load on its diagonal; transitions sum to K x K
        (top-1: 1) x the tokens present at both layers, which are at most those of either layer; no layer has
        more tokens than the statistics. Real-valued loads are only checked for being >= 0."""
        for name, a in self.counts().items():
            if a.size and a.min() < 0:
                return f"{name} holds a negative count ({a.min()})"
        if self.real_valued:
            return None
        K, tok = self.top_k, self.tokens
        if tok < 0:
            return f"tokens is {tok}"
        if self.tokens_L is not None:
            if self.tokens_L.size and self.tokens_L.max() > tok:
                return f"tokens_L holds {int(self.tokens_L.max())}, more than the {tok} tokens"
            if self.extra.get("top_k_known", True):
                bad = np.nonzero(self.load_LE.sum(axis=1) != K * self.tokens_L)[0]
                if bad.size:
                    l = int(bad[0])
                    return (f"layer {l}: load_LE sums to {int(self.load_LE[l].sum())}, expected top_k x tokens_L = "
                            f"{K} x {int(self.tokens_L[l])}")
        if self.load_only:
            return None
        checks = [
            ("load1_LE", self.load1_LE.sum(axis=1), self.tokens_L, "tokens_L"),
            ("trans_LEE", self.trans_LEE.sum(axis=(1, 2)), K * K * self.pair_tokens_L, "top_k^2 x pair_tokens_L"),
            ("trans1_LEE", self.trans1_LEE.sum(axis=(1, 2)), self.pair_tokens_L, "pair_tokens_L"),
        ]
        for name, got, want, what in checks:
            bad = np.nonzero(got != want)[0]
            if bad.size:
                l = int(bad[0])
                return f"layer {l}: {name} sums to {int(got[l])}, expected {what} = {int(want[l])}"
        if (self.load1_LE > self.load_LE).any():
            l, e = (int(i[0]) for i in np.nonzero(self.load1_LE > self.load_LE))
            return f"layer {l}, expert {e}: top-1 load {int(self.load1_LE[l, e])} exceeds load {int(self.load_LE[l, e])}"
        diag = np.diagonal(self.coact_LEE, axis1=1, axis2=2)
        if not (np.array_equal(self.coact_LEE, self.coact_LEE.transpose(0, 2, 1)) and np.array_equal(diag, self.load_LE)):
            return "coact_LEE is not symmetric with load_LE on its diagonal"
        pair_cap = np.minimum(self.tokens_L[:-1], self.tokens_L[1:])
        if (self.pair_tokens_L > pair_cap).any():
            l = int(np.nonzero(self.pair_tokens_L > pair_cap)[0][0])
            return f"layer {l}: pair_tokens_L {int(self.pair_tokens_L[l])} exceeds the tokens of layer {l} or {l + 1}"
        return None

    def counts(self) -> dict[str, np.ndarray]:
        """The count arrays present (all of ``COUNT_FIELDS``, or ``load_LE`` and what a load-only source had)."""
        return {name: getattr(self, name) for name in COUNT_FIELDS if getattr(self, name) is not None}


def accumulate_reference(s: RoutingStats, b: RoutingBatch) -> None:
    """Straightforward exact counting with ``np.bincount`` (the specification the fast path must match)."""
    L, E, K = s.num_layers, s.num_experts, s.top_k
    ex = b.experts_TLK.astype(np.int64)
    present = b.present_or_ones()
    s.tokens += len(b)
    for l in range(L):
        rows = ex[present[:, l], l, :]
        s.tokens_L[l] += rows.shape[0]
        s.load_LE[l] += np.bincount(rows.ravel(), minlength=E)
        s.load1_LE[l] += np.bincount(rows[:, 0], minlength=E)
        pair = (rows[:, :, None] * E + rows[:, None, :]).ravel()
        s.coact_LEE[l] += np.bincount(pair, minlength=E * E).reshape(E, E)
        if l + 1 < L:
            both = present[:, l] & present[:, l + 1]
            a, c = ex[both, l, :], ex[both, l + 1, :]
            s.pair_tokens_L[l] += a.shape[0]
            s.trans_LEE[l] += np.bincount((a[:, :, None] * E + c[:, None, :]).ravel(), minlength=E * E).reshape(E, E)
            s.trans1_LEE[l] += np.bincount(a[:, 0] * E + c[:, 0], minlength=E * E).reshape(E, E)


class FastCounter:
    """Streaming exact counts with the compiled kernels of ``placer.core.stats.fast`` (same result as the
    reference). ``add(batch)`` as often as needed, then ``result()``."""

    def __init__(self, num_layers: int, num_experts: int, top_k: int) -> None:
        L, E, K = num_layers, num_experts, top_k
        self.shape = (L, E, K)
        self.id_dtype = expert_dtype(E)
        z = lambda *s: np.zeros(s, dtype=np.int64)  # noqa: E731
        self.tokens = 0
        self.load_LE, self.load1_LE, self.coact_up_LEE = z(L, E), z(L, E), z(L, E, E)
        self.trans_LEE, self.trans1_LEE = z(max(L - 1, 0), E, E), z(max(L - 1, 0), E, E)
        self.tokens_L, self.pair_tokens_L = z(L), z(max(L - 1, 0))

    def add(self, experts_TLK: np.ndarray, present_TL: np.ndarray | None = None) -> None:
        """Count a batch: ``experts_TLK`` [T, L, K] ids in rank order, ``present_TL`` [T, L] or None."""
        L, E, K = self.shape
        if experts_TLK.ndim != 3 or experts_TLK.shape[1:] != (L, K):
            raise ValueError(f"batch has routing of shape {experts_TLK.shape[1:]}, expected (layers, top_k) = {(L, K)}")
        T = experts_TLK.shape[0]
        if T == 0:
            return
        _check_ids(experts_TLK, present_TL, E)
        # Layer-major copy in the trace's id type: contiguous per-layer reads, one compiled variant per type.
        ex_LTK = np.empty((L, T, K), dtype=self.id_dtype)
        ex_LTK[...] = experts_TLK.transpose(1, 0, 2)
        if present_TL is None:
            present_LT, has_present = np.ones((L, 1), dtype=np.bool_), False
        else:
            present_LT, has_present = np.ascontiguousarray(present_TL.T, dtype=np.bool_), True
        count_batch(ex_LTK, present_LT, has_present, self.load_LE, self.load1_LE, self.coact_up_LEE,
                    self.trans_LEE, self.trans1_LEE, self.tokens_L, self.pair_tokens_L)
        self.tokens += T

    def merge(self, other: "FastCounter") -> "FastCounter":
        """Add the counts of ``other`` (a counter of other tokens, same shape); returns self."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge counts of shape {other.shape} into {self.shape}")
        for name in ("load_LE", "load1_LE", "coact_up_LEE", "trans_LEE", "trans1_LEE", "tokens_L", "pair_tokens_L"):
            mine = getattr(self, name)
            mine += getattr(other, name)  # in place
        self.tokens += other.tokens
        return self

    def result(self, **kw: Any) -> RoutingStats:
        L, E, K = self.shape
        return RoutingStats(L, E, K, load_LE=self.load_LE.copy(), tokens=self.tokens, load1_LE=self.load1_LE.copy(),
                            coact_LEE=symmetrize_coact(self.coact_up_LEE, self.load_LE),
                            trans_LEE=self.trans_LEE.copy(), trans1_LEE=self.trans1_LEE.copy(),
                            tokens_L=self.tokens_L.copy(), pair_tokens_L=self.pair_tokens_L.copy(), **kw)


def _check_ids(experts_TLK: np.ndarray, present_TL: np.ndarray | None, E: int) -> None:
    """Ids outside [0, E) would write outside the count arrays in the compiled kernel: refuse them."""
    if not np.issubdtype(experts_TLK.dtype, np.integer):
        raise ValueError(f"expert ids must be integers, got {experts_TLK.dtype}")
    lo, hi = experts_TLK.min(), experts_TLK.max()
    if lo >= 0 and hi < E:
        return
    ex = experts_TLK if present_TL is None else experts_TLK[present_TL]
    bad = ex[(ex < 0) | (ex >= E)]
    if bad.size:
        raise ValueError(f"expert id {int(bad.flat[0])} outside [0, {E})")


def compute_stats(batches: Iterable[RoutingBatch], num_layers: int, num_experts: int, top_k: int,
                  **kw: Any) -> RoutingStats:
    """Exact statistics of a stream of batches (fast path; equal to the reference)."""
    c = FastCounter(num_layers, num_experts, top_k)
    for b in batches:
        c.add(b.experts_TLK, b.present_TL)
    return c.result(**kw)


def merge_stats(parts: Sequence[RoutingStats]) -> RoutingStats:
    """The sum of statistics of several shards of tokens (equal to the statistics of their concatenation).

    Shapes (layers, experts, top-k) and model layer indices must agree. Splits are summed by name (a split
    missing from a shard counts as empty there). If any shard holds loads only, the result holds loads
    only (its affinity would be incomplete) and says so in ``extra["notes"]``.
    """
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    for p in parts[1:]:
        where_a = ", ".join(first.sources) or "first statistics"
        where_b = ", ".join(p.sources) or "other statistics"
        if p.shape != first.shape:
            raise InputError(f"{where_b}: shape (layers, experts, top_k) = {p.shape} differs from {where_a}: "
                             f"{first.shape}; only statistics of one model can be merged")
        if p.moe_layer_indices and first.moe_layer_indices and p.moe_layer_indices != first.moe_layer_indices:
            raise InputError(f"{where_b}: moe_layer_indices {list(p.moe_layer_indices)} differ from {where_a}: "
                             f"{list(first.moe_layer_indices)}")
    load_only = any(p.load_only for p in parts)
    names = [n for n in COUNT_FIELDS if all(getattr(p, n) is not None for p in parts)]
    if load_only:
        names = [n for n in names if n in ("load_LE", "tokens_L")]
    # Counts add up exactly; real-valued loads (rates, averages) add up as reals.
    sums = {n: np.sum([getattr(p, n) for p in parts], axis=0,
                      dtype=np.float64 if any(getattr(p, n).dtype.kind == "f" for p in parts) else np.int64)
            for n in names}
    notes = []
    for p in parts:
        notes += [n for n in p.extra.get("notes", []) if n not in notes]
    if len({p.real_valued for p in parts}) > 1:
        notes.append("token counts and real-valued loads added together: the sum weighs each input by its scale")
    if load_only and not all(p.load_only for p in parts):
        notes.append("some merged statistics held loads only: co-activation and transitions dropped")
    sources: list[str] = []
    for p in parts:
        sources += [s for s in p.sources if s not in sources]
    models = list(dict.fromkeys(p.model_name for p in parts))
    L, E, K = first.shape
    top_k_known = all(p.extra.get("top_k_known", True) for p in parts)
    extra = {"merged_from": sum(max(1, int(p.extra.get("merged_from", 1))) for p in parts)}
    if not top_k_known:
        extra["top_k_known"] = False
    if notes:
        extra["notes"] = notes
    out = RoutingStats(L, E, K, tokens=int(sum(p.tokens for p in parts)), model_name=" + ".join(models),
                       moe_layer_indices=first.moe_layer_indices or next((p.moe_layer_indices for p in parts), ()),
                       sources=tuple(sources), extra=extra, **sums)
    # Splits add up only if every shard was split the same way (else their sum would not be the total).
    split_by = {p.extra.get("split_by") for p in parts}
    if len(split_by) == 1 and None not in split_by:
        out.extra["split_by"] = split_by.pop()
        for n in dict.fromkeys(n for p in parts for n in p.splits):
            out.splits[n] = merge_stats([p.splits[n] for p in parts if n in p.splits])
    elif any(p.splits for p in parts):
        out.extra.setdefault("notes", []).append("splits dropped: the merged statistics were not all split the same way")
    return out
