"""Building blocks the baseline solvers share: hot-expert replication and balanced packing. Pure functions on
arrays."""

from __future__ import annotations

import numpy as np


def copies_cap(num_experts: int, num_slots: int, num_gpus: int) -> int:
    """The most copies of one expert that can sit on different GPUs: one per GPU (more only when a GPU has more
    slots than there are experts, which forces two copies of some expert onto one GPU)."""
    return max(num_gpus, -(-num_slots // num_experts))


def replicate_hottest(load_E: np.ndarray, num_slots: int, max_copies: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Give ``num_slots - E`` extra replicas, one at a time, to the expert whose load per replica is the
    largest (the first such expert on ties), as DeepSeek's EPLB does; with ``max_copies`` (``copies_cap``: a
    copy beyond one per GPU would share a GPU with another and split that GPU's tokens, a wasted slot), only
    among the experts that have fewer copies.

    Returns ``phy_P`` (the logical expert of each physical item: experts 0..E-1, then the extra copies in the
    order they were made) and ``cnt_E`` (replicas per expert).
    """
    load_E = np.asarray(load_E, dtype=np.float64)
    E = load_E.shape[0]
    if num_slots < E:
        raise ValueError(f"slots ({num_slots}) fewer than experts ({E})")
    phy = list(range(E))
    cnt = np.ones(E, dtype=np.int64)
    if max_copies is not None and max_copies * E < num_slots:
        raise ValueError(f"{num_slots} slots need more than {max_copies} copies of some of the {E} experts")
    for _ in range(num_slots - E):
        per_copy = load_E / cnt
        if max_copies is not None:
            per_copy = np.where(cnt < max_copies, per_copy, -np.inf)
        e = int(np.argmax(per_copy))
        phy.append(e)
        cnt[e] += 1
    return np.array(phy, dtype=np.int64), cnt


def pack_balanced(weight_N: np.ndarray, num_packs: int, items_per_pack: int,
                  label_N: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Longest-processing-time packing of N = num_packs x items_per_pack items into packs of exactly
    ``items_per_pack`` items: items in decreasing weight (ties: lower index first) each go to the lightest
    pack that has room (ties: the lower pack). With one item per pack, item i goes to pack i (as EPLB does).

    ``label_N``: items with the same label (replicas of one expert) avoid sharing a pack when another pack
    with room exists; where the packing still puts two in one pack, the later one is swapped with the item of
    closest weight in a pack without its label whose own label the first pack lacks (each swap leaves one item
    fewer sharing its pack with its label; this stops when none does, or when no such swap exists).

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
    if label_N is not None:
        _separate_labels(pack, rank, w, np.asarray(label_N))
    return pack, rank


def _separate_labels(pack: np.ndarray, rank: np.ndarray, w: np.ndarray, label: np.ndarray) -> None:
    """Swap items (in place) until no pack holds two items of one label, or no swap removes one."""
    while True:
        first: dict[tuple[int, int], int] = {}
        for i in np.lexsort((rank, pack)).tolist():
            first.setdefault((int(pack[i]), int(label[i])), i)
        later = [i for i in range(len(pack)) if first[int(pack[i]), int(label[i])] != i]
        if not later:
            return
        i = later[0]
        b = pack[i]
        mine = set(label[pack == b].tolist())
        ok = [j for j in range(len(pack)) if pack[j] != b and label[j] not in mine
              and label[i] not in set(label[pack == pack[j]].tolist())]
        if not ok:
            return
        j = min(ok, key=lambda j: (abs(w[j] - w[i]), j))
        pack[i], pack[j] = pack[j], pack[i]
        rank[i], rank[j] = rank[j], rank[i]
