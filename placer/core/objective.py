"""The objective: what a placement is optimised for, as a typed weighted sum of what the cost model measures.

One ``Objective`` is what a solver optimises, what ``placer.core.cost`` measures on a trace (``measure``) and what
the placement JSON records (``to_dict`` / ``from_dict``); its ``name`` (``1.125*ep_dispatch_gpus+2.0*max_load``)
is a rendering for people and is never parsed back.

The project's objective (``Objective.weighted``, ``docs/solvers.md``), summed over layers, with ``Weights`` w:

- ``ep``: ``w.intra x remote GPUs + (w.inter - w.intra) x remote nodes + w.balance x largest GPU load``, the remote
  GPUs and nodes **averaged over the token's home rank** (uniform over the GPUs, independent of routing):
  (G-1)/G x the distinct GPUs and (N-1)/N x the distinct nodes of each token-layer. The home rank is set by
  attention data parallelism at serving time, so a placement cannot (and must not) be fitted to the trace's
  sequence numbering.
- ``coherent``: ``w.intra x pair hops + (w.inter - w.intra) x cross-node pair hops + w.balance x largest GPU load``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from placer.core.enums import NameEnum
from placer.core.mode import TrafficMode
from placer.core.topology import Topology

if TYPE_CHECKING:  # the cost model's result type, for annotations only (cost.py does not import this module)
    from placer.core.cost import EvalResult

# Weights are rounded to 0.001, so that integer models (CP-SAT) optimise exactly the objective reported.
WEIGHT_DECIMALS = 3


class Quantity(NameEnum):
    """A figure of a placement on a trace, summed over layers (``docs/cost-model.md``), that an objective weighs.

    The first group is measured by the cost model; the last by the MILP formulation that reports it only.
    """

    MAX_LOAD = "max_load"                      # the largest GPU load of each layer
    MAX_OVER_MEAN_LOAD = "max_over_mean_load"  # mean over layers of max/mean GPU load
    EP_REMOTE_GPUS = "ep_remote_gpus"          # remote GPUs a token is dispatched to (home excluded)
    EP_REMOTE_NODES = "ep_remote_nodes"
    EP_DISPATCH_GPUS = "ep_dispatch_gpus"      # distinct GPUs of a token-layer, home or not
    EP_DISPATCH_NODES = "ep_dispatch_nodes"
    COHERENT_MESSAGES = "coherent_messages"    # messages between adjacent layers' GPU sets
    COHERENT_NODE_MESSAGES = "coherent_node_messages"
    COHERENT_PAIR_HOPS = "coherent_pair_hops"  # expert pairs of adjacent layers on different GPUs
    COHERENT_NODE_PAIR_HOPS = "coherent_node_pair_hops"
    TIME_US = "time_us"                        # the estimated MoE time
    MOETUNER_MAX_LINK_US = "moetuner_max_link_us"  # MoETuner's stage 2: the busiest link's time
    EXFLOW_HOPS = "exflow_hops"                # ExFlow's link-weighted hops on the sampled tokens
    EXFLOW_HOPS_TOP1 = "exflow_hops_top1"      # the same, top-1 to top-1 hops only


    @property
    def mode(self) -> TrafficMode | None:
        """The traffic model that counts this quantity (None: both)."""
        return _MODE.get(self)

    def measure(self, result: "EvalResult") -> float | None:
        """This quantity in a cost-model result; None where the result cannot say it (another traffic model,
        balance only for a traffic figure, or a figure only its solver computes)."""
        read = _MEASURE.get(self)
        if read is None or (self.mode is not None and self.mode != result.mode):
            return None
        if result.balance_only and self not in (Quantity.MAX_LOAD, Quantity.MAX_OVER_MEAN_LOAD):
            return None
        value = read(result)
        return None if value is None else float(value)


_MODE: dict[Quantity, TrafficMode] = {
    **{q: TrafficMode.EP for q in (Quantity.EP_REMOTE_GPUS, Quantity.EP_REMOTE_NODES, Quantity.EP_DISPATCH_GPUS,
                                   Quantity.EP_DISPATCH_NODES)},
    **{q: TrafficMode.COHERENT for q in (Quantity.COHERENT_MESSAGES, Quantity.COHERENT_NODE_MESSAGES,
                                         Quantity.COHERENT_PAIR_HOPS, Quantity.COHERENT_NODE_PAIR_HOPS,
                                         Quantity.MOETUNER_MAX_LINK_US, Quantity.EXFLOW_HOPS,
                                         Quantity.EXFLOW_HOPS_TOP1)},
}
_MEASURE: dict[Quantity, Callable[["EvalResult"], float | None]] = {
    Quantity.MAX_LOAD: lambda r: r.max_load_L.sum(),
    Quantity.MAX_OVER_MEAN_LOAD: lambda r: r.mean_imbalance,
    Quantity.EP_REMOTE_GPUS: lambda r: r.remote_gpus_L.sum(),
    Quantity.EP_REMOTE_NODES: lambda r: r.remote_nodes_L.sum(),
    Quantity.EP_DISPATCH_GPUS: lambda r: r.dispatch_gpus_L.sum(),
    Quantity.EP_DISPATCH_NODES: lambda r: r.dispatch_nodes_L.sum(),
    Quantity.COHERENT_MESSAGES: lambda r: r.messages_L1.sum(),
    Quantity.COHERENT_NODE_MESSAGES: lambda r: r.node_messages_L1.sum(),
    Quantity.COHERENT_PAIR_HOPS: lambda r: r.pair_hops_L1.sum(),
    Quantity.COHERENT_NODE_PAIR_HOPS: lambda r: r.node_pair_hops_L1.sum(),
    Quantity.TIME_US: lambda r: r.total_us,
}

# What a placement controls of each traffic model's traffic, per GPU and per node (the project objective's terms).
TRAFFIC_QUANTITIES: dict[TrafficMode, tuple[Quantity, Quantity]] = {
    TrafficMode.EP: (Quantity.EP_DISPATCH_GPUS, Quantity.EP_DISPATCH_NODES),
    TrafficMode.COHERENT: (Quantity.COHERENT_PAIR_HOPS, Quantity.COHERENT_NODE_PAIR_HOPS),
}


def _weight(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if v < 0:
        raise ValueError(f"{name} ({v}) must be >= 0")
    return round(v, WEIGHT_DECIMALS)


@dataclass(frozen=True)
class Weights:
    """The weights of the project objective (``docs/solvers.md``), rounded to ``WEIGHT_DECIMALS``.

    intra_weight: cost of one message over NVLink (a remote GPU inside the node, a hop inside the node).
    inter_weight: cost of one message across nodes (at least ``intra_weight``).
    balance_weight: cost of one token of a layer's busiest GPU load.
    """

    intra_weight: float = 1.0
    inter_weight: float = 9.0
    balance_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("intra_weight", "inter_weight", "balance_weight"):
            object.__setattr__(self, name, _weight(name, getattr(self, name)))
        if self.inter_weight < self.intra_weight:
            raise ValueError(f"inter_weight ({self.inter_weight}) must be >= intra_weight ({self.intra_weight}): a "
                             f"network message never costs less than an NVLink one")

    @classmethod
    def for_topology(cls, topology: Topology, mode: TrafficMode | str, intra_weight: float | None = None,
                     inter_weight: float | None = None, balance_weight: float | None = None) -> "Weights":
        """The weights given, the others from the topology's time model:

        - ``inter_weight``: ``intra_weight x intra_bw / inter_bw`` (9 with the H100 preset): a network message
          weighs what its transfer takes, and never less than an NVLink one (a topology whose network is
          faster than its links inside a node, as a calibration on CPU processes can measure, gives intra);
        - ``balance_weight``: one token more on a layer's busiest GPU adds ``topology.token_compute_us`` of expert
          compute (above the knee); one message more adds about ``topology.token_message_us / G`` to the slowest
          GPU's link time (messages spread over the G GPUs), and a remote GPU in ep mode is two messages
          (dispatch and combine). So, in units of ``intra_weight``: ``G t_tok / t_msg`` (coherent) or half of it
          (ep): 18.4 / 9.2 on 4 GPUs with the H100 preset.
        """
        mode = TrafficMode.parse(mode)
        intra = _weight("intra_weight", 1.0 if intra_weight is None else intra_weight)
        if inter_weight is None:
            inter_weight = max(intra, intra * topology.intra_bw_gbs / topology.inter_bw_gbs)
        if balance_weight is None:
            balance_weight = (topology.num_gpus * topology.token_compute_us / topology.token_message_us
                              / mode.model.messages_per_hop)
        return cls(intra, inter_weight, balance_weight)

    def to_dict(self) -> dict[str, float]:
        return {"intra_weight": self.intra_weight, "inter_weight": self.inter_weight,
                "balance_weight": self.balance_weight}


@dataclass(frozen=True)
class Term:
    """One quantity and its weight."""

    quantity: Quantity
    weight: float


class Aggregate(NameEnum):
    """How a robust objective combines its scenarios: the worst one, or their mean."""

    WORST = "worst"
    MEAN = "mean"

    def combine(self, values: Any) -> float:
        values = [float(v) for v in values]
        return max(values) if self is Aggregate.WORST else sum(values) / len(values)


@dataclass(frozen=True)
class Objective:
    """A weighted sum of quantities, minimised. Terms keep their order; zero weights are dropped.

    robust: over several scenarios (workloads), the value is each scenario's weighted sum divided by the
    scenario's tokens (so that a large scenario does not drown a small one), combined by ``robust`` (the
    worst scenario or their mean); None for one input.
    """

    terms: tuple[Term, ...]
    robust: Aggregate | None = None

    def __post_init__(self) -> None:
        if self.robust is not None:
            object.__setattr__(self, "robust", Aggregate(self.robust))
        terms = tuple(Term(Quantity(t.quantity), float(t.weight)) for t in self.terms if t.weight != 0)
        if len({t.quantity for t in terms}) != len(terms):
            raise ValueError(f"objective names a quantity twice: {[t.quantity.value for t in terms]}")
        modes = {t.quantity.mode for t in terms} - {None}
        if len(modes) > 1:
            raise ValueError(f"objective mixes the traffic models {sorted(m.value for m in modes)}")
        object.__setattr__(self, "terms", terms)

    @classmethod
    def of(cls, quantity: Quantity) -> "Objective":
        """The objective of one quantity with weight 1."""
        return cls((Term(quantity, 1.0),))

    @classmethod
    def weighted(cls, mode: TrafficMode | str, weights: Weights, num_gpus: int, num_nodes: int,
                 traffic: bool = True) -> "Objective":
        """The project objective of ``mode`` (module docstring); ``traffic=False`` for load-only statistics,
        where balance is all that can be optimised."""
        mode = TrafficMode.parse(mode)
        per_gpu, per_node = TRAFFIC_QUANTITIES[mode]
        # ep counts a token-layer's distinct GPUs and nodes: the remote ones are (n-1)/n of them on average.
        model = mode.model
        c_gpu = model.remote(weights.intra_weight, num_gpus)
        c_node = model.remote(weights.inter_weight - weights.intra_weight, num_nodes)
        if num_nodes == 1:
            c_node = 0.0
        terms = [Term(per_gpu, c_gpu), Term(per_node, c_node)] if traffic else []
        terms.append(Term(Quantity.MAX_LOAD, weights.balance_weight))
        return cls(tuple(terms))

    @property
    def mode(self) -> TrafficMode | None:
        """The traffic model the objective needs (None: either)."""
        return next((t.quantity.mode for t in self.terms if t.quantity.mode is not None), None)

    def weight(self, quantity: Quantity) -> float:
        """The weight of ``quantity`` (0 if the objective does not weigh it)."""
        return next((t.weight for t in self.terms if t.quantity is quantity), 0.0)

    def measure(self, result: "EvalResult") -> float | None:
        """The weighted sum in a cost-model result (per token of the result if the objective is robust); None if
        the result cannot measure one of its terms."""
        total = 0.0
        for t in self.terms:
            v = t.quantity.measure(result)
            if v is None:
                return None
            total += t.weight * v
        if self.robust is not None:
            return total / max(result.tokens, 1)
        return total

    def measure_scenarios(self, results: "list[EvalResult]") -> float | None:
        """A robust objective's value on the cost-model results of its scenarios (each per token, combined)."""
        assert self.robust is not None, "measure_scenarios needs a robust objective"
        values = [self.measure(r) for r in results]
        return None if any(v is None for v in values) else self.robust.combine(values)

    def with_robust(self, robust: Aggregate | str | None) -> "Objective":
        return Objective(self.terms, None if robust is None else Aggregate(robust))

    @property
    def name(self) -> str:
        """``w1*quantity1+w2*quantity2`` (a single quantity of weight 1 is its name alone; no term at all, every
        weight zero, is ``0.0*max_load``)."""
        if len(self.terms) == 1 and self.terms[0].weight == 1.0:
            text = self.terms[0].quantity.value
        else:
            text = "+".join(f"{t.weight!r}*{t.quantity.value}" for t in self.terms) or "0.0*max_load"
        return text if self.robust is None else f"{self.robust} scenario of ({text})/tokens"

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        """JSON: ``{"terms": [{"quantity": name, "weight": w}, ...], "robust": null | "worst" | "mean"}``."""
        return {"terms": [{"quantity": t.quantity.value, "weight": t.weight} for t in self.terms],
                "robust": None if self.robust is None else self.robust.value}

    @classmethod
    def from_dict(cls, d: Any) -> "Objective":
        """The objective of ``to_dict``'s object (ValueError naming the field or term otherwise)."""
        if not isinstance(d, dict) or set(d) != {"terms", "robust"}:
            raise ValueError(f"expected {{'terms': [...], 'robust': ...}}, got {d!r}"[:200])
        terms, robust = d["terms"], d["robust"]
        if robust is not None and robust not in [a.value for a in Aggregate]:
            raise ValueError(f"robust {robust!r} is not one of {', '.join(a.value for a in Aggregate)} or null")
        if not isinstance(terms, list):
            raise ValueError(f"terms: expected a list, got {type(terms).__name__}")
        out = []
        for i, t in enumerate(terms):
            if not isinstance(t, dict) or set(t) != {"quantity", "weight"}:
                raise ValueError(f"term {i}: expected {{'quantity': name, 'weight': number}}, got {t!r}")
            try:
                q = Quantity(t["quantity"])
            except ValueError:
                raise ValueError(f"term {i}: unknown quantity {t['quantity']!r}; known: "
                                 f"{', '.join(q.value for q in Quantity)}") from None
            w = t["weight"]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"term {i}: weight must be a finite number, got {w!r}")
            out.append(Term(q, float(w)))
        return cls(tuple(out), robust)
