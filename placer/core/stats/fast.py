"""Compiled counting kernels (numba): the fast path of ``placer.core.stats.core``.

The reference counter (``accumulate_reference``) is the specification; these kernels give the same exact
integer counts, tested against it and against a direct per-token loop.

Why they are fast:

- **layer-major input** ``ex_LTK`` (one transpose per batch), so the loop over a layer's tokens reads
  contiguous memory, and the layer's count matrices (E x E, 512 KB for E = 256) stay in cache;
- **layers in parallel** (``prange``): layer l owns ``load_LE[l]``, ``coact_LEE[l]`` and the transitions
  l -> l+1, so threads never write the same cell;
- **half the co-activation work**: a token's experts are distinct, so each unordered pair is counted once
  in the upper triangle (``coact_up_LEE[l, min, max]``) and ``symmetrize_coact`` mirrors it and puts the
  load on the diagonal at the end.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def count_batch(ex_LTK, present_LT, has_present, load_LE, load1_LE, coact_up_LEE, trans_LEE, trans1_LEE,
                tokens_L, pair_tokens_L):
    """Add one batch's counts.

    ex_LTK:      [L, T, K] expert ids (any unsigned or signed integer type), layer-major
    present_LT:  [L, T] bool (ignored when ``has_present`` is False)
    coact_up_LEE: [L, E, E] unordered co-activated pairs, counted once at [min(i, j), max(i, j)], i != j
    Other outputs as in ``RoutingStats``; all int64, added to in place.
    """
    L, T, K = ex_LTK.shape
    for l in prange(L):
        last = l + 1 >= L
        for t in range(T):
            if has_present and not present_LT[l, t]:
                continue
            tokens_L[l] += 1
            load1_LE[l, ex_LTK[l, t, 0]] += 1
            for a in range(K):
                i = ex_LTK[l, t, a]
                load_LE[l, i] += 1
                for b in range(a + 1, K):
                    j = ex_LTK[l, t, b]
                    if i < j:
                        coact_up_LEE[l, i, j] += 1
                    else:
                        coact_up_LEE[l, j, i] += 1
            if last or (has_present and not present_LT[l + 1, t]):
                continue
            pair_tokens_L[l] += 1
            trans1_LEE[l, ex_LTK[l, t, 0], ex_LTK[l + 1, t, 0]] += 1
            for a in range(K):
                i = ex_LTK[l, t, a]
                for b in range(K):
                    trans_LEE[l, i, ex_LTK[l + 1, t, b]] += 1


def symmetrize_coact(coact_up_LEE: np.ndarray, load_LE: np.ndarray) -> np.ndarray:
    """Full symmetric co-activation [L, E, E] from upper-triangle pair counts, with the load on the diagonal."""
    out = coact_up_LEE + coact_up_LEE.transpose(0, 2, 1)
    L, E = load_LE.shape
    out[:, np.arange(E), np.arange(E)] = load_LE
    return out


@njit(parallel=True, cache=True)
def next_layer_hits(ex_TLK, present_TL, has_present, trans_LEE, load_LE, m, hits_L, pop_hits_L, pairs_L):
    """Next-layer predictability of a sample of tokens, per adjacent layer pair l -> l+1.

    For a token present at l and l+1, the predicted set is the m experts j of layer l+1 with the highest
    score ``sum over the token's experts i at layer l of trans_LEE[l, i, j]`` (ties: lower id); the
    popularity baseline predicts the m experts of layer l+1 with the highest load. ``hits_L[l]`` and
    ``pop_hits_L[l]`` add how many of the token's K experts at l+1 fall in each predicted set;
    ``pairs_L[l]`` adds one per token counted.
    """
    T, L, K = ex_TLK.shape
    E = load_LE.shape[1]
    for l in prange(L - 1):
        pop_rank = np.argsort(-load_LE[l + 1], kind="mergesort")
        in_pop = np.zeros(E, dtype=np.bool_)
        for r in range(m):
            in_pop[pop_rank[r]] = True
        score = np.zeros(E, dtype=np.int64)
        chosen = np.zeros(E, dtype=np.bool_)
        for t in range(T):
            if has_present and not (present_TL[t, l] and present_TL[t, l + 1]):
                continue
            score[:] = 0
            for a in range(K):
                score += trans_LEE[l, ex_TLK[t, l, a]]
            # Top-m by repeated selection (m is small): the highest score, lowest id first.
            chosen[:] = False
            for r in range(m):
                best = -1
                for j in range(E):
                    if not chosen[j] and (best < 0 or score[j] > score[best]):
                        best = j
                chosen[best] = True
            pairs_L[l] += 1
            for b in range(K):
                j = ex_TLK[t, l + 1, b]
                if chosen[j]:
                    hits_L[l] += 1
                if in_pop[j]:
                    pop_hits_L[l] += 1
