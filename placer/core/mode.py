"""The traffic model: how a token travels between the GPUs of the MoE layers (``docs/cost-model.md``).

``TrafficMode`` is the one definition of the two models; what differs between them lives behind it (the
quantities each one counts in ``placer.core.objective``, the cost model's counters in ``placer.core.cost``,
the dispatch plans of ``placer.replay.plan``).
"""

from __future__ import annotations

from enum import Enum


class TrafficMode(str, Enum):
    """``ep``: standard expert parallelism: at every MoE layer a token is dispatched from its home GPU to the
    GPUs of its experts and combined back home. ``coherent``: ExFlow's context-coherent expert parallelism:
    a token stays where its experts ran and moves only when the next layer's experts are elsewhere.

    A ``str`` enum: members compare equal to their names (``TrafficMode.EP == "ep"``) and print as them, so
    JSON files and the command line keep the plain names.
    """

    EP = "ep"
    COHERENT = "coherent"

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__  # hash like the name it equals, so a dict keyed by names finds it

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

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
