"""Serving stacks that return the experts every token was routed to: one module per stack, one registry.

Each module's docstring cites the release and the files its wire format was read from (docs/server-trace.md
gathers them). Adding a stack is a new module with an ``Engine`` subclass and one line in ``ENGINES``.
"""

from __future__ import annotations

from placer.core.errors import InputError
from placer.tracer.engines.base import BadResponse, Engine, NoRouting, Routed, WireShape
from placer.tracer.engines.sglang import SGLang, ShapeMismatch
from placer.tracer.engines.trtllm import TRTLLM
from placer.tracer.engines.vllm import VLLM

ENGINES: dict[str, Engine] = {e.name: e for e in (VLLM(), SGLang(), TRTLLM())}


def engine_for(name: str, option: str = "--engine") -> Engine:
    """The registered engine called ``name``; a InputError naming the choices otherwise."""
    try:
        return ENGINES[name]
    except KeyError:
        raise InputError(f"{option}: unknown engine {name!r}; choose from {', '.join(ENGINES)}") from None


__all__ = ["ENGINES", "BadResponse", "Engine", "NoRouting", "Routed", "ShapeMismatch",
           "WireShape", "engine_for"]
