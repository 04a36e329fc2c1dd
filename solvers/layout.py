"""Building blocks the baseline solvers share: hot-expert replication and balanced packing. Pure functions on
arrays."""

from __future__ import annotations

import numpy as np


def replicate_hottest(load_E: np.ndarray, num_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Give ``num_slots - E`` extra replicas, one at a time, to the expert whose load per replica is the
    largest (the first such expert on ties), as DeepSeek's EPLB does.

    Returns ``phy_P`` (the logical expert of each physical item: experts 0..E-1, then the extra copies in the
    order they were made) and ``cnt_E`` (replicas per expert).
    """
    load_E = np.asarray(load_E, dtype=np.float64)
    E = load_E.shape[0]
    if num_slots < E:
        raise ValueError(f"slots ({num_slots}) fewer than experts ({E})")
    phy = list(range(E))
    cnt = np.ones(E, dtype=np.int64)
    for _ in range(num_slots - E):
        e = int(np.argmax(load_E / cnt))
        phy.append(e)
        cnt[e] += 1
    return np.array(phy, dtype=np.int64), cnt


def pack_balanced(weight_N: np.ndarray, num_packs: int, items_per_pack: int,
                  label_N: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Longest-processing-time packing of N = num_packs x items_per_pack items into packs of exactly
    ``items_per_pack`` items: items in decreasing weight (ties: lower index first) each go to the lightest
    pack that has room (ties: the lower pack). With one item per pack, item i goes to pack i (as EPLB does).

    ``label_N``: items with the same label (replicas of one expert) avoid sharing a pack when another pack
    with room exists.

    Returns ``pack_N`` and ``rank_N`` (the item's position inside its pack, in arrival order).
    """
    w = np.asarray(weight_N, dtype=np.float64)
    N = w.shape[0]
    if N != num_packs * items_per_pack:
        raise ValueError(f"{N} items do not fill {num_packs} packs of {items_per_pack}")
    if items_per_pack == 1:
        return np.arange(N, dtype=np.int64), np.zeros(N, dtype=np.int64)
    pack = np.full(N, -1, dtype=np.int64)
    rank = np.full(N, -1, dtype=np.int64)
    pack_w = [0.0] * num_packs
    pack_n = [0] * num_packs
    held: list[set] = [set() for _ in range(num_packs)]
    for i in np.argsort(-w, kind="stable"):
        open_ = [b for b in range(num_packs) if pack_n[b] < items_per_pack]
        if label_N is not None:
            fresh = [b for b in open_ if label_N[i] not in held[b]]
            open_ = fresh or open_
        b = min(open_, key=pack_w.__getitem__)
        pack[i], rank[i] = b, pack_n[b]
        pack_w[b] += w[i]
        pack_n[b] += 1
        if label_N is not None:
            held[b].add(label_N[i])
    return pack, rank
