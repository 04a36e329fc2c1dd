"""Is a model's routing learned? Inter-layer mutual information against a shuffled control, and balance.

A trained MoE routes a token at layer l+1 in a way that depends on where it went at layer l (both follow
the token's residual stream). The plug-in mutual information between the top-1 expert of adjacent layers
measures that dependence; shuffling tokens between positions independently at every layer keeps each
layer's marginal distribution and destroys the dependence, so the same estimator on the shuffled routing
gives the estimator's bias on this many tokens.
"""

from __future__ import annotations

import numpy as np


def mutual_information_bits(a_T: np.ndarray, b_T: np.ndarray, num_experts: int) -> float:
    """Plug-in estimate of I(A; B) in bits from paired samples of two expert ids in [0, num_experts)."""
    E = num_experts
    joint = np.bincount(a_T.astype(np.int64) * E + b_T.astype(np.int64), minlength=E * E).reshape(E, E)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pa @ pb)[nz])).sum())


def adjacent_layer_mi(experts_TLK: np.ndarray, num_experts: int) -> np.ndarray:
    """``mi_L1[l]``: mutual information (bits) of the top-1 expert at layer l and at layer l+1."""
    top1_TL = experts_TLK[:, :, 0]
    return np.array([
        mutual_information_bits(top1_TL[:, l], top1_TL[:, l + 1], num_experts) for l in range(top1_TL.shape[1] - 1)
    ])


def shuffled_control(experts_TLK: np.ndarray, seed: int = 0) -> np.ndarray:
    """The routing with tokens permuted independently at every layer (each layer's marginals unchanged)."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(experts_TLK)
    for l in range(experts_TLK.shape[1]):
        out[:, l] = experts_TLK[rng.permutation(experts_TLK.shape[0]), l]
    return out


def max_share_over_fair(experts_TLK: np.ndarray, num_experts: int) -> np.ndarray:
    """Per layer, the busiest expert's share of the T*K picks divided by the fair share K/E (1 = balanced)."""
    T, L, K = experts_TLK.shape
    out = np.empty(L)
    for l in range(L):
        load = np.bincount(experts_TLK[:, l].reshape(-1).astype(np.int64), minlength=num_experts)
        out[l] = load.max() / (T * K / num_experts)
    return out


def routing_report(experts_TLK: np.ndarray, num_experts: int, seed: int = 0) -> dict:
    """MI of adjacent layers (mean, and per pair), the shuffled control's, their gap, and load balance."""
    mi = adjacent_layer_mi(experts_TLK, num_experts)
    mi_shuf = adjacent_layer_mi(shuffled_control(experts_TLK, seed), num_experts)
    share = max_share_over_fair(experts_TLK, num_experts)
    return {
        "tokens": int(experts_TLK.shape[0]),
        "mi_bits_mean": float(mi.mean()),
        "mi_shuffled_bits_mean": float(mi_shuf.mean()),
        "mi_gap_bits": float(mi.mean() - mi_shuf.mean()),
        "mi_bits_per_pair": [round(float(x), 4) for x in mi],
        "max_share_over_fair_per_layer": [round(float(x), 3) for x in share],
        "max_share_over_fair": float(share.max()),
    }
