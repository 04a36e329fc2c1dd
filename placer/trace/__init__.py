"""Routing traces: the Parquet format, its streaming reader and writer, synthetic traces and importers."""

from placer.trace.reader import TraceDataset, TraceReader, concat_batches, read_trace
from placer.trace.schema import PHASES, SCHEMA_VERSION, RoutingBatch, TraceMeta, expert_dtype
from placer.trace.writer import TraceWriter, write_trace

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
