"""Pure per-step dispatch plans: which token's hidden state goes from which rank to which, and which rows each
rank's experts compute, for one step of a trace under one placement, in both traffic models.

No torch here: the plan is NumPy arrays, so it can be checked by hand and by tests without processes.

The model every plan follows. A token's hidden state is held, at any moment, as *contributions* on a set of
ranks (its holders) whose sum is the hidden state. An **exchange** moves a token from holders ``H`` to new
holders ``D``: every holder s sends its contribution to every new holder d != s, and d's new value is the sum
of what it received plus its own contribution if it was a holder (a rank never sends to itself). A
**compute** runs, on every rank of S (the ranks of the token's K expert slots at this layer), the slots'
experts on the token's full hidden state h; the rank's new contribution is its weighted expert outputs, plus
h itself on the one rank that keeps the residual. So a layer maps h to ``h + sum_k w_k FFN_{e_k}(n(h))``
(n: the MoE block's pre-norm, applied by whichever rank runs the expert).

- ``ep`` (standard expert parallelism): per layer, dispatch ``{home} -> S + {home}``, compute (the home
  keeps the residual), combine ``S + {home} -> {home}``. A token goes once to each distinct remote rank of
  its experts and its partial sums come back once from each.
- ``coherent`` (ExFlow): per layer, one exchange from the previous layer's ranks to this layer's, compute
  (the lowest rank of S keeps the residual); the token is never sent home between layers. Each rank of
  ``S_l`` sends its contribution to each other rank of ``S_{l+1}``, as the cost model counts. After the last
  layer one exchange brings every token home.

A token with no routing at a layer (``present`` False) skips it: its holders and contributions stay as they
are (no message), and the layer leaves it unchanged.

Rows: a rank's buffer holds one row per token it holds, in increasing token order; every index in a plan is a
row of such a buffer. Tokens are step-local (0..T-1); the replica rule uses each token's index in the trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from placer.core.mode import TrafficMode
from placer.core.placement import Placement
from placer.core.topology import home_gpu


@dataclass
class RankExchange:
    """One rank's part of an exchange.

    send_idx:    [n_send] rows of the rank's current buffer to send, grouped by destination rank (ascending),
                 increasing token order inside a group.
    send_splits: [G] rows sent to each rank (0 to itself).
    recv_splits: [G] rows received from each rank (0 from itself); they arrive grouped by source rank.
    recv_dst:    [n_recv] row of the new buffer each received row is added to.
    own_src / own_dst: rows of the current buffer this rank keeps, and their rows in the new buffer.
    tokens:      [n_new] step-local token of each row of the new buffer (increasing).
    """

    send_idx: np.ndarray
    send_splits: np.ndarray
    recv_splits: np.ndarray
    recv_dst: np.ndarray
    own_src: np.ndarray
    own_dst: np.ndarray
    tokens: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class RankCompute:
    """One rank's expert work at one layer, on the buffer built by the exchange before it.

    slot_rows[j] / slot_weights[j]: rows of the buffer routed to the rank's local slot j (in increasing token
    order) and their gate weights. keep: [n] True where the row's value (the residual, or a contribution of
    a token absent from this layer) stays in the rank's new contribution.
    slot_tokens[j]: the step-local token of each routed row (for tests and error messages).
    """

    slot_rows: list[np.ndarray]
    slot_weights: list[np.ndarray]
    keep: np.ndarray
    slot_tokens: list[np.ndarray] = field(default_factory=list)

    @property
    def tokens_computed(self) -> int:
        """(token, expert) pairs this rank computes at this layer."""
        return int(sum(len(r) for r in self.slot_rows))


@dataclass
class LayerPlan:
    """dispatch: the exchange before the layer's experts (per rank; None for ranks not planned).
    combine: ep only, the exchange back home after them. compute: per rank."""

    dispatch: list[RankExchange | None]
    compute: list[RankCompute | None]
    combine: list[RankExchange | None] | None = None


@dataclass
class StepPlan:
    """The plan of one step (a batch of consecutive tokens of the trace) for every planned rank.

    home_tokens[r]: the step-local tokens whose home is rank r (increasing): the rows of r's first buffer
    and of its final output. final: coherent only, the exchange that brings every token home.
    """

    mode: str
    num_ranks: int
    home_T: np.ndarray
    home_tokens: list[np.ndarray]
    layers: list[LayerPlan]
    final: list[RankExchange | None] | None = None


def plan_exchange(holders_TG: np.ndarray, dest_TG: np.ndarray, stay_T: np.ndarray, ranks) -> list[RankExchange | None]:
    """The exchange moving every token from holders to destinations (per rank in ``ranks``).

    holders_TG / dest_TG: [T, G] bool sets of ranks before and after. stay_T: [T] tokens that do not move
    (their destinations must equal their holders; each keeps its own contribution and nothing is sent).
    """
    T, G = holders_TG.shape
    pos_h = np.cumsum(holders_TG, axis=0) - 1
    pos_d = np.cumsum(dest_TG, axis=0) - 1
    move = ~stay_T
    out: list[RankExchange | None] = [None] * G
    for r in ranks:
        snd = holders_TG[:, r, None] & dest_TG & move[:, None]
        snd[:, r] = False
        d, t = np.nonzero(snd.T)  # by destination, then token
        rcv = holders_TG & dest_TG[:, r, None] & move[:, None]
        rcv[:, r] = False
        s, t2 = np.nonzero(rcv.T)  # by source, then token: the order all_to_all delivers
        own = np.nonzero(holders_TG[:, r] & dest_TG[:, r])[0]
        out[r] = RankExchange(
            send_idx=pos_h[t, r].astype(np.int64),
            send_splits=np.bincount(d, minlength=G).astype(np.int64),
            recv_splits=np.bincount(s, minlength=G).astype(np.int64),
            recv_dst=pos_d[t2, r].astype(np.int64),
            own_src=pos_h[own, r].astype(np.int64),
            own_dst=pos_d[own, r].astype(np.int64),
            tokens=np.nonzero(dest_TG[:, r])[0].astype(np.int64),
        )
    return out


def _plan_compute(r: int, dest_TG: np.ndarray, rank_TK: np.ndarray, local_TK: np.ndarray, weights_TK: np.ndarray,
                  present_T: np.ndarray, keeper_T: np.ndarray, slots_per_gpu: int) -> RankCompute:
    pos_d = np.cumsum(dest_TG[:, r]) - 1
    t, k = np.nonzero((rank_TK == r) & present_T[:, None])
    j = local_TK[t, k]
    order = np.argsort(j, kind="stable")
    t, k, j = t[order], k[order], j[order]
    bounds = np.searchsorted(j, np.arange(slots_per_gpu + 1))
    rows = pos_d[t].astype(np.int64)
    w = weights_TK[t, k].astype(np.float32)
    tokens = np.nonzero(dest_TG[:, r])[0]
    keep = (~present_T[tokens]) | (keeper_T[tokens] == r)
    cut = lambda a: [a[bounds[i]:bounds[i + 1]] for i in range(slots_per_gpu)]  # noqa: E731
    return RankCompute(slot_rows=cut(rows), slot_weights=cut(w), keep=keep, slot_tokens=cut(t.astype(np.int64)))


def plan_step(placement: Placement, experts_TLK: np.ndarray, weights_TLK: np.ndarray, present_TL: np.ndarray | None,
              seq_T: np.ndarray, token_index_T: np.ndarray, mode: str, ranks=None) -> StepPlan:
    """The dispatch plan of one step.

    experts_TLK / weights_TLK: [T, L, K] routing of the step's tokens (L may be fewer than the placement's
    layers: the first L are replayed). present_TL: [T, L] or None (all present). seq_T: [T] sequence ids (the
    home rank is ``home_gpu(seq, G)``). token_index_T: [T] each token's 0-based index in the trace (the
    replica rule). ranks: the ranks to plan for (default all; a worker plans only its own).
    """
    mode = TrafficMode.parse(mode)
    T, L, K = experts_TLK.shape
    if L > placement.num_layers:
        raise ValueError(f"the step has {L} layers, the placement {placement.num_layers}")
    G, spg = placement.num_gpus, placement.slots_per_gpu
    ranks = range(G) if ranks is None else list(ranks)
    present = np.ones((T, L), dtype=bool) if present_TL is None else np.asarray(present_TL, dtype=bool)
    home = home_gpu(seq_T, G)
    at_home = np.zeros((T, G), dtype=bool)
    at_home[np.arange(T), home] = True
    no_stay = np.zeros(T, dtype=bool)
    home_tokens = [np.nonzero(home == r)[0].astype(np.int64) if r in ranks else None for r in range(G)]

    layers: list[LayerPlan] = []
    route = _ROUTES[mode](home, at_home, no_stay, ranks)
    for l in range(L):
        slot_TK = placement.slots_for_tokens(l, experts_TLK[:, l, :], token_index_T)
        rank_TK, local_TK = slot_TK // spg, slot_TK % spg
        on_TG = np.zeros((T, G), dtype=bool)
        tt = np.repeat(np.arange(T), K)
        on_TG[tt, rank_TK.ravel()] = True
        on_TG &= present[:, l, None]
        pres = present[:, l]
        # Step 1: the rows to the ranks of the token's experts (the mode says from where).
        dest, dispatch, keeper = route.dispatch(on_TG, pres)
        # Step 2: each rank runs its slots' experts on the rows routed to them.
        compute = [None] * G
        for r in ranks:
            compute[r] = _plan_compute(r, dest, rank_TK, local_TK, weights_TLK[:, l, :], pres, keeper, spg)
        # Step 3: the partial sums back home (ep), or left where they are for the next layer (coherent).
        combine = route.combine(dest)
        layers.append(LayerPlan(dispatch=dispatch, compute=compute, combine=combine))
    final = route.final()
    return StepPlan(mode=mode, num_ranks=G, home_T=home, home_tokens=home_tokens, layers=layers, final=final)


class _EpRoute:
    """ep: at every layer, home -> every rank of the token's experts (the home keeps its copy: it adds the
    residual), then the partial sums back home."""

    def __init__(self, home: np.ndarray, at_home: np.ndarray, no_stay: np.ndarray, ranks) -> None:
        self.home, self.at_home, self.no_stay, self.ranks = home, at_home, no_stay, ranks

    def dispatch(self, on_TG: np.ndarray, pres: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
        dest = on_TG | self.at_home
        return dest, plan_exchange(self.at_home, dest, self.no_stay, self.ranks), self.home

    def combine(self, dest: np.ndarray) -> list:
        return plan_exchange(dest, self.at_home, self.no_stay, self.ranks)

    def final(self) -> None:
        return None


class _CoherentRoute:
    """coherent: the previous layer's ranks -> this layer's (absent tokens stay where they are; the lowest rank of
    the token's experts keeps the residual), and back home after the last layer."""

    def __init__(self, home: np.ndarray, at_home: np.ndarray, no_stay: np.ndarray, ranks) -> None:
        self.holders, self.at_home, self.no_stay, self.ranks = at_home, at_home, no_stay, ranks

    def dispatch(self, on_TG: np.ndarray, pres: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
        dest = np.where(pres[:, None], on_TG, self.holders)
        return dest, plan_exchange(self.holders, dest, ~pres, self.ranks), np.argmax(on_TG, axis=1)

    def combine(self, dest: np.ndarray) -> None:
        self.holders = dest
        return None

    def final(self) -> list:
        return plan_exchange(self.holders, self.at_home, self.no_stay, self.ranks)


# How each traffic model routes a step's rows between the ranks.
_ROUTES: dict[TrafficMode, type[_EpRoute] | type[_CoherentRoute]] = {
    TrafficMode.EP: _EpRoute,
    TrafficMode.COHERENT: _CoherentRoute,
}


def exchanges_of(plan: StepPlan) -> list[tuple[int, str, list[RankExchange | None]]]:
    """Every exchange of a step in order, as (layer, phase, per-rank exchanges); the final one has layer -1."""
    out = []
    for l, lp in enumerate(plan.layers):
        out.append((l, "dispatch", lp.dispatch))
        if lp.combine is not None:
            out.append((l, "combine", lp.combine))
    if plan.final is not None:
        out.append((-1, "return", plan.final))
    return out


def link_bytes(ex: RankExchange, rank: int, row_bytes: int, node_of_rank: np.ndarray) -> tuple[int, int, int, int]:
    """(intra-node bytes, inter-node bytes, intra messages, inter messages) a rank sends in one exchange."""
    same = node_of_rank == node_of_rank[rank]
    rows = ex.send_splits
    return (int(rows[same].sum()) * row_bytes, int(rows[~same].sum()) * row_bytes,
            int((rows[same] > 0).sum()), int((rows[~same] > 0).sum()))


def corrupt_plan(plan: StepPlan, placement: Placement, what: str) -> tuple[int, int]:
    """Test hook: route one (token, expert) pair wrongly, to prove the correctness check catches it.

    what = "expert": move the first routed row of a slot to another slot of the same rank holding a different
    expert; "weight": halve the first routed row's gate weight. Returns (layer, step-local token) corrupted.
    Only the planned ranks are touched; the first layer and rank with something to corrupt are used.
    """
    if what not in ("expert", "weight"):
        raise ValueError(f"unknown corruption {what!r}")
    spg = placement.slots_per_gpu
    for l, lp in enumerate(plan.layers):
        for r, cp in enumerate(lp.compute):
            if cp is None:
                continue
            for j in range(spg):
                if not len(cp.slot_rows[j]):
                    continue
                tok = int(cp.slot_tokens[j][0])
                if what == "weight":
                    cp.slot_weights[j] = cp.slot_weights[j].copy()
                    cp.slot_weights[j][0] *= 0.5
                    return l, tok
                e = placement.phy2log_LP[l, r * spg + j]
                others = [i for i in range(spg) if placement.phy2log_LP[l, r * spg + i] != e]
                if not others:
                    continue
                i = others[0]
                for name in ("slot_rows", "slot_weights", "slot_tokens"):
                    arrs = getattr(cp, name)
                    arrs[i] = np.concatenate([arrs[i], arrs[j][:1]])
                    arrs[j] = arrs[j][1:]
                return l, tok
    raise ValueError("nothing to corrupt: no rank holds two different experts with routed tokens")
