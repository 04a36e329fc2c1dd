"""Record the routing of real Hugging Face MoE models: family adapters, router hooks, text input."""

from placer.tracer.adapters import ADAPTERS, FamilyAdapter, adapter_for, moe_routers, supported_families
from placer.tracer.record import RouterRecorder, TraceOptions, trace_batches

__all__ = [
    "ADAPTERS",
    "FamilyAdapter",
    "RouterRecorder",
    "TraceOptions",
    "adapter_for",
    "moe_routers",
    "supported_families",
    "trace_batches",
]
