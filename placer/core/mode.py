"""The traffic model: how a token travels between the GPUs of the MoE layers (``docs/cost-model.md``).

``TrafficMode`` is the one definition of the two models; what differs between them lives behind it (the
quantities each one counts in ``placer.core.objective``, the figures the cost model reports for each
(``TRAFFIC_FIGURES`` below) and its counters in ``placer.core.cost``, the dispatch plans of ``placer.replay.plan``).
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
    def decomposes_by_layer(self) -> bool:
        """True if a layer's traffic depends on that layer's placement alone (``ep``), so that the layers can be
        solved one by one; ``coherent`` traffic couples every layer to the next."""
        return self is TrafficMode.EP


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


# What each traffic model counts, in the order tables show it; the first is the model's headline figure.
TRAFFIC_FIGURES: dict[TrafficMode, tuple[TrafficFigure, ...]] = {
    TrafficMode.EP: (TrafficFigure("remote_gpus_per_token", "remote GPUs", False, "remote_gpus_L", "token_layers_L"),
                     TrafficFigure("remote_nodes_per_token", "remote nodes", True, "remote_nodes_L", "token_layers_L")),
    TrafficMode.COHERENT: (
        TrafficFigure("messages_per_token", "msgs", False, "messages_L1", "pair_tokens_L1"),
        TrafficFigure("pair_hops_per_token", "hops", False, "pair_hops_L1", "pair_tokens_L1"),
        TrafficFigure("node_messages_per_token", "cross-node msgs", True, "node_messages_L1", "pair_tokens_L1")),
}
