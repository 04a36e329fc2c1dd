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

``load_only`` statistics (from a load matrix or an SGLang ``stat`` dump) have only ``load_LE``; anything that
needs affinity must refuse them with a clear message (``require_affinity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from placer.errors import UsageError
from placer.trace.schema import RoutingBatch


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

    @property
    def load_only(self) -> bool:
        return self.trans_LEE is None or self.coact_LEE is None

    def require_affinity(self, what: str) -> None:
        """Raise a UsageError naming ``what`` if these statistics hold loads only."""
        if self.load_only:
            src = ", ".join(self.sources) or "these statistics"
            raise UsageError(f"{what} needs co-activation and transition counts, but {src} holds expert loads "
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


def compute_stats(batches: Iterable[RoutingBatch], num_layers: int, num_experts: int, top_k: int,
                  **kw: Any) -> RoutingStats:
    """Exact statistics of a stream of batches."""
    s = RoutingStats.empty(num_layers, num_experts, top_k, **kw)
    for b in batches:
        s.add_batch(b)
    return s
