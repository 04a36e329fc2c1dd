"""Streaming trace writer: row groups go to a temporary file that is renamed onto the target at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from placer.core.errors import MoeplaceError, InputError
from placer.core.fileio import prepare_output, replace_atomic, temp_beside
from placer.core.trace.schema import (
    FINAL_EXTRA_KEY, RoutingBatch, TraceMeta, arrow_schema, file_version, routing_problem,
)

DEFAULT_ROW_GROUP = 65536


def _arrow(values: np.ndarray) -> pa.Array:
    """A flat NumPy array as an Arrow array without a copy (booleans are packed to bits). ``pa.array`` would do
    the same but first imports pandas to check for a Series: about a second, once, in a run that may last two."""
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("=")).reshape(-1)
    if values.dtype == np.bool_:
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(np.packbits(values, bitorder="little"))])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _fixed_list(values: np.ndarray, list_type: pa.DataType) -> pa.FixedSizeListArray:
    # The schema's own list type (values not nullable): a batch of another type would be cast, and the cast
    # imports pyarrow.compute (a fifth of a second) on first use.
    return pa.FixedSizeListArray.from_arrays(_arrow(values), type=list_type)


def _leaf(f: pa.Field) -> str:
    """The Parquet column path of an Arrow field (a list's values sit at ``name.list.element``)."""
    return f"{f.name}.list.element" if pa.types.is_fixed_size_list(f.type) or pa.types.is_list(f.type) else f.name


def parquet_options(schema: pa.Schema) -> dict:
    """How the columns are encoded (the schema, and so every reader, is the same either way).

    - Dictionary encoding for every column but ``weights``: expert ids take 8-9 bits per value as dictionary
      indices against 32 bits (Parquet stores uint8/uint16 as INT32) plain, which halves their size and is
      faster too; float16 gate weights gain nothing from a dictionary (random ones take the same space,
      constant ones compress to nothing plain) and hashing every value costs about a third of the write.
    - Min/max statistics only for the per-token scalar columns: nothing reads those of the list columns, and
      computing them per value (float16's especially) cost up to half of the write.
    See BENCHMARKS.md (trace writer options) for the measurements.
    """
    lists = {"experts", "weights", "present"}
    return {"use_dictionary": [_leaf(f) for f in schema if f.name != "weights"],
            "write_statistics": [f.name for f in schema if f.name not in lists]}


class TraceWriter:
    """Write a trace batch by batch; use as a context manager.

    The optional columns (``token_id``, ``domain``, ``present``, ``weights``) are chosen when the writer is
    opened, since a Parquet schema is fixed for the whole file. ``with_weights=False`` leaves the gate weights
    out (the source has none; schema version 2, read back as 1/K), which is cheaper to encode for a wide model;
    with it, batches without weights store 1/K. Batches are buffered up to ``row_group_size`` tokens so
    that small batches (a tracer's forward passes) still make row groups of a useful size.

    The file appears at ``path`` only when the block ends without an exception and at least one token was
    written; otherwise the temporary file is removed and ``path`` is untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: TraceMeta,
        *,
        with_token_id: bool = False,
        with_domain: bool = False,
        with_present: bool = False,
        with_weights: bool = True,
        row_group_size: int = DEFAULT_ROW_GROUP,
        compression: str = "zstd",
    ) -> None:
        self.path = prepare_output(path)
        self.meta = dataclasses.replace(meta, schema_version=file_version(with_weights))
        self.with_token_id = with_token_id
        self.with_domain = with_domain
        self.with_present = with_present
        self.with_weights = with_weights
        self.row_group_size = int(row_group_size)
        self.schema = arrow_schema(self.meta, with_token_id, with_domain, with_present, with_weights)
        self._type = {f.name: f.type for f in self.schema}
        self._tmp = temp_beside(self.path)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=compression, **parquet_options(self.schema))
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.tokens_written = 0
        self._closed = False

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing ---------------------------------------------------------------------------------
    def write(self, batch: RoutingBatch) -> None:
        """Append the tokens of ``batch`` (shapes checked against the metadata)."""
        if self._closed:
            raise RuntimeError("TraceWriter is closed")
        n = len(batch)
        if n == 0:
            return
        L, E, K = self.meta.shape
        experts = batch.experts_TLK
        if experts.shape != (n, L, K):
            raise MoeplaceError(f"{self.path}: batch experts shape {experts.shape} does not match [T, {L}, {K}]")
        problem = routing_problem(batch, E)
        if problem is not None:  # what the reader would refuse is never written
            col, t, what = problem
            raise InputError(f"{self.path}: cannot write token {self.tokens_written + t}: column '{col}': {what}")
        cols: dict[str, pa.Array] = {
            "seq_id": _arrow(_or_default(batch.seq_T, n, np.int64, self.tokens_written)),
            "position": _arrow(_or_default(batch.position_T, n, np.int32, 0)),
            "phase": _arrow(_or_default(batch.phase_T, n, np.int8, 0)),
        }
        if self.with_token_id:
            tok = batch.token_T
            cols["token_id"] = _arrow(tok.astype(np.int32, copy=False)) if tok is not None else pa.nulls(n, pa.int32())
        if self.with_domain:
            cols["domain"] = _arrow(_or_default(batch.domain_T, n, np.int16, 0))
        cols["experts"] = _fixed_list(experts.astype(self.meta.id_dtype, copy=False), self._type["experts"])
        if not self.with_weights:
            if batch.weights_TLK is not None:
                raise MoeplaceError(f"{self.path}: batch has gate weights but the writer was opened without 'weights'")
        elif batch.weights_TLK is not None:
            cols["weights"] = _fixed_list(batch.weights_TLK.astype(np.float16, copy=False), self._type["weights"])
        else:  # no gate weights known, in a file with the column: 1/K, the value a version-2 reader gives
            cols["weights"] = _fixed_list(np.full(n * L * K, 1.0 / K, dtype=np.float16), self._type["weights"])
        if self.with_present:
            cols["present"] = _fixed_list(batch.present_or_ones().astype(bool, copy=False), self._type["present"])
        elif batch.present_TL is not None and not batch.present_TL.all():
            raise MoeplaceError(f"{self.path}: batch has missing layers but the writer was opened without 'present'")
        rb = pa.RecordBatch.from_arrays([cols[f.name] for f in self.schema], schema=self.schema)
        self._pending.append(rb)
        self._pending_rows += n
        self.tokens_written += n
        if self._pending_rows >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self._pending.clear()
        self._pending_rows = 0

    def close(self, final_extra: dict | None = None) -> Path:
        """Flush, close and move the file into place; refuses an empty trace.

        ``final_extra``: facts known only at the end (a server trace's failed requests), JSON-able. The schema's
        metadata was written when the file was opened, so they go to the Parquet key ``moeplace.extra``, which
        the reader merges into ``meta.extra`` (``self.meta`` gets them too).
        """
        if self._closed:
            return self.path
        try:
            self._flush()
            if final_extra:
                self._writer.add_key_value_metadata({FINAL_EXTRA_KEY.decode(): json.dumps(final_extra, sort_keys=True)})
                self.meta = dataclasses.replace(self.meta, extra={**self.meta.extra, **final_extra})
            self._writer.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        if self.tokens_written == 0:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            raise InputError(f"{self.path}: nothing to write, the trace has no tokens")
        try:
            replace_atomic(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the output path is left as it was."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


def _or_default(values: np.ndarray | None, n: int, dtype, start: int) -> np.ndarray:
    if values is None:
        if dtype == np.int64:
            return np.arange(start, start + n, dtype=dtype)
        return np.full(n, start, dtype=dtype)
    values = np.asarray(values)
    if values.shape != (n,):
        raise MoeplaceError(f"per-token column has shape {values.shape}, expected ({n},)")
    return values.astype(dtype, copy=False)


def write_trace(path: str | os.PathLike, meta: TraceMeta, batch: RoutingBatch, **kwargs) -> Path:
    """Write one in-memory batch as a whole trace (optional columns chosen from what the batch holds)."""
    kwargs.setdefault("with_token_id", batch.token_T is not None)
    kwargs.setdefault("with_domain", batch.domain_T is not None)
    kwargs.setdefault("with_present", batch.present_TL is not None and not batch.present_TL.all())
    with TraceWriter(path, meta, **kwargs) as w:
        w.write(batch)
    return Path(path)
