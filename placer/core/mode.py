"""The traffic model: how a token travels between the GPUs of the MoE layers (``docs/cost-model.md``).

``TrafficMode`` is the one definition of the two models. What differs between them and is data lives behind it,
in one ``TrafficModel`` per mode (``mode.model``: whether the layers decompose, how remote traffic is averaged
over the home rank, the messages of a hop, the figures the cost model reports), so that callers ask the mode
instead of testing which one it is. What is a different formulation stays with its owner as one named function
or class per mode: the quantities each mode counts in ``placer.core.objective``, the counters of
``placer.core.cost``, the instance's traffic arrays in ``solvers/instance.py``, the dispatch plans of
``placer.replay.plan``.
"""

from __future__ import annotations

from dataclasses import dataclass

from placer.core.enums import NameEnum


class TrafficMode(NameEnum):
    """``ep``: standard expert parallelism: at every MoE layer a token is dispatched from its home GPU to the
    GPUs of its experts and combined back home. ``coherent``: ExFlow's context-coherent expert parallelism:
    a token stays where its experts ran and moves only when the next layer's experts are elsewhere.

    A ``NameEnum``: members are their names in comparisons, printing and JSON, so files and the command line keep
    the plain names.
    """

    EP = "ep"
    COHERENT = "coherent"

    @classmethod
    def parse(cls, value: "TrafficMode | str") -> "TrafficMode":
        """The mode named ``value``; ValueError naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"mode {value!r} is not one of {', '.join(m.value for m in cls)}") from None

    @property
    def model(self) -> "TrafficModel":
        """What this traffic model is, as data (``TRAFFIC_MODELS``)."""
        return TRAFFIC_MODELS[self]

    @property
    def decomposes_by_layer(self) -> bool:
        """True if a layer's traffic depends on that layer's placement alone (``ep``), so that the layers can be
        solved one by one; ``coherent`` traffic couples every layer to the next."""
        return self.model.decomposes_by_layer


@dataclass(frozen=True)
class TrafficFigure:
    """One traffic figure of a traffic model, per token: its key in ``EvalResult.summary``, its column label,
    whether it only matters across nodes, and its per-layer counts and token counts (``EvalResult`` fields; the
    coherent ones are [L-1] arrays of transitions l -> l+1)."""

    key: str
    label: str
    nodes_only: bool
    counts: str
    tokens: str


@dataclass(frozen=True)
class TrafficModel:
    """One traffic model's data.

    decomposes_by_layer: a layer's traffic depends on that layer's placement alone, so that the layers can be
        solved (and their GPUs renamed) one by one (``ep``); ``coherent`` traffic couples every layer to the next.
    home_averaged: the traffic a placement controls is counted as the distinct GPUs (and nodes) of a token-layer,
        home or not; the home rank, set by attention data parallelism, is uniform over the n GPUs (nodes), so
        (n-1)/n of them are remote on average (``ep``, see ``remote``). ``coherent`` counts hops between the
        experts' GPUs, where no home is involved.
    messages_per_hop: messages one remote GPU costs the slowest link (``ep``: dispatch and combine) or one hop
        (``coherent``).
    first_layer: the layer the per-layer traffic counts start at: 0 (``ep``, [L] arrays) or 1 (``coherent``,
        [L-1] arrays of the transitions l-1 -> l).
    figures: what the cost model reports per token, in the order tables show it; the first is the headline.
    """

    decomposes_by_layer: bool
    home_averaged: bool
    messages_per_hop: float
    first_layer: int
    figures: tuple[TrafficFigure, ...]

    def remote(self, count: float, n: int) -> float:
        """``count`` (a weight, or a count of distinct GPUs out of ``n``, or of nodes) as remote ones averaged over
        the home rank: ``count x (n-1) / n`` if ``home_averaged``, else ``count``."""
        return count * (n - 1) / n if self.home_averaged else count

    def remote_denominator(self, n: int) -> int:
        """What ``remote`` divides by (an integer model scales its coefficients by it to stay exact)."""
        return n if self.home_averaged else 1


TRAFFIC_MODELS: dict[TrafficMode, TrafficModel] = {
    TrafficMode.EP: TrafficModel(
        decomposes_by_layer=True, home_averaged=True, messages_per_hop=2.0, first_layer=0,
        figures=(TrafficFigure("remote_gpus_per_token", "remote GPUs", False, "remote_gpus_L", "token_layers_L"),
                 TrafficFigure("remote_nodes_per_token", "remote nodes", True, "remote_nodes_L", "token_layers_L"))),
    TrafficMode.COHERENT: TrafficModel(
        decomposes_by_layer=False, home_averaged=False, messages_per_hop=1.0, first_layer=1,
        figures=(TrafficFigure("messages_per_token", "msgs", False, "messages_L1", "pair_tokens_L1"),
                 TrafficFigure("pair_hops_per_token", "hops", False, "pair_hops_L1", "pair_tokens_L1"),
                 TrafficFigure("node_messages_per_token", "cross-node msgs", True, "node_messages_L1",
                               "pair_tokens_L1"))),
}

# What each traffic model counts, in the order tables show it; the first is the model's headline figure.
TRAFFIC_FIGURES: dict[TrafficMode, tuple[TrafficFigure, ...]] = {m: model.figures for m, model in TRAFFIC_MODELS.items()}
