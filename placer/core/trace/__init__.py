"""Routing traces: the Parquet format, its streaming reader and writer."""

from placer.core.trace.reader import TraceDataset, TraceReader, concat_batches, read_trace
from placer.core.trace.schema import PHASES, SCHEMA_VERSION, RoutingBatch, TraceMeta, expert_dtype
from placer.core.trace.writer import TraceWriter, write_trace

__all__ = [
    "PHASES",
    "SCHEMA_VERSION",
    "RoutingBatch",
    "TraceMeta",
    "TraceReader",
    "TraceDataset",
    "TraceWriter",
    "concat_batches",
    "expert_dtype",
    "read_trace",
    "write_trace",
]
