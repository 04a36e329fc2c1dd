"""Streaming, validating trace reader; several files of one shape read as one dataset."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from placer.core.errors import InputError, first_line
from placer.core.trace.schema import (
    FINAL_EXTRA_KEY,
    META_KEY,
    OPTIONAL_COLUMNS,
    PHASES,
    READABLE_VERSIONS,
    REQUIRED_COLUMNS,
    RoutingBatch,
    TraceMeta,
    routing_problem,
    uniform_weights,
)

DEFAULT_BATCH = 65536

# What a caller may ask ``iter_batches`` for, and the Parquet columns each needs.
FIELDS = {
    "experts": "experts",
    "weights": "weights",
    "present": "present",
    "seq": "seq_id",
    "position": "position",
    "phase": "phase",
    "token": "token_id",
    "domain": "domain",
}
ALL_FIELDS = tuple(FIELDS)


# Files of other kinds given where a trace goes (``solve stats.npz``), by their ending: what they are and where
# they go instead.
_LOADS = "pass it with --load FILE (solve, evaluate, rebalance, simulate, stats) or as export's input"
NOT_A_TRACE = {
    ".npz": "a stats file (moeplace stats): pass it with --stats FILE (solve, evaluate, rebalance) or as an input "
            "of stats or export",
    ".npy": f"a load matrix: {_LOADS}",
    ".csv": f"a load matrix: {_LOADS}",
    ".pt": f"a load matrix or an SGLang statistics dump: {_LOADS}",
    ".json": f"a placement or a load file (an SGLang logical_count); a load file: {_LOADS}",
}


def _flat_numpy(arr: pa.Array) -> np.ndarray:
    # flatten() honours the slice offset of the list array (``.values`` would not).
    return arr.flatten().to_numpy(zero_copy_only=False)


class TraceReader:
    """One trace file: validated metadata and schema on open, validated batches while streaming.

    ``iter_batches(fields=...)`` reads only the columns asked for, so a pass that needs only the expert ids
    (statistics) never decodes the weights.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: trace file not found")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory; give a trace file (or use a command that takes a dataset)")
        try:
            # pre_buffer=False: with it, pyarrow keeps every column chunk it has read until the file is closed,
            # so memory would grow with the trace instead of staying at one row group.
            self._pf = pq.ParquetFile(self.path, pre_buffer=False)
            schema = self._pf.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as exc:
            other = NOT_A_TRACE.get(self.path.suffix.lower())
            if other is not None:
                raise InputError(f"{self.path}: not a trace (Parquet) but, by its name, {other}") from None
            raise InputError(f"{self.path}: not a readable Parquet file ({first_line(exc)})") from None
        self.meta = self._validate_schema(schema)
        final = (self._pf.metadata.metadata or {}).get(FINAL_EXTRA_KEY)
        if final is not None:  # facts the writer learned at the end (TraceWriter.close(final_extra=...))
            try:
                more = json.loads(final)
            except ValueError as exc:
                raise InputError(f"{self.path}: metadata '{FINAL_EXTRA_KEY.decode()}' is not valid JSON ({exc})") from None
            if not isinstance(more, dict):
                raise InputError(f"{self.path}: metadata '{FINAL_EXTRA_KEY.decode()}' must be a JSON object, "
                                 f"got {type(more).__name__}")
            self.meta = dataclasses.replace(self.meta, extra={**self.meta.extra, **more})
        self.num_tokens = int(self._pf.metadata.num_rows)
        if self.num_tokens == 0:
            raise InputError(f"{self.path}: the trace has no tokens")
        names = set(schema.names)
        self.has_present = "present" in names
        self.has_weights = "weights" in names  # without: the source gave no gate weights, read as 1/K
        self.has_token_id = "token_id" in names
        self.has_domain = "domain" in names

    # -- validation --------------------------------------------------------------------------------
    def _validate_schema(self, schema: pa.Schema) -> TraceMeta:
        p = self.path
        raw = (schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise InputError(f"{p}: no 'moeplace' metadata in the Parquet schema; not a moeplace trace "
                             f"(convert routing logs with `moeplace import`)")
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"{p}: metadata 'moeplace' is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise InputError(f"{p}: metadata 'moeplace' must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise InputError(f"{p}: metadata schema_version is {version!r}; this moeplace reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        for key in ("num_layers", "num_experts", "top_k"):
            if key not in d:
                raise InputError(f"{p}: metadata field '{key}' is missing")
            if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1:
                raise InputError(f"{p}: metadata field '{key}' must be a positive integer, got {d[key]!r}")
        try:
            meta = TraceMeta.from_dict(d)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{p}: metadata: {exc}") from None
        names = schema.names
        for col in REQUIRED_COLUMNS + (("weights",) if version == 1 else ()):
            if col not in names:
                raise InputError(f"{p}: column '{col}' is missing (columns: {', '.join(names)})")
        L, E, K = meta.shape
        for col, width in (("experts", L * K), ("weights", L * K), ("present", L)):
            if col not in names:
                continue
            t = schema.field(col).type
            if not pa.types.is_fixed_size_list(t):
                raise InputError(f"{p}: column '{col}' has type {t}, expected a fixed-size list of {width}")
            if t.list_size != width:
                what = (f"num_layers*top_k = {L}*{K} = {width}" if col != "present" else f"num_layers = {L}")
                raise InputError(f"{p}: column '{col}' rows hold {t.list_size} values, expected {what}")
            vt = t.value_type
            ok = {"experts": pa.types.is_integer, "weights": pa.types.is_floating, "present": pa.types.is_boolean}[col]
            if not ok(vt):
                raise InputError(f"{p}: column '{col}' holds {vt} values")
        for col in ("seq_id", "position", "phase", "token_id", "domain"):
            if col in names and not pa.types.is_integer(schema.field(col).type):
                raise InputError(f"{p}: column '{col}' has type {schema.field(col).type}, expected an integer")
        return meta

    def _check_batch(self, b: RoutingBatch, first_row: int, has_experts: bool) -> None:
        problem = routing_problem(b, self.meta.num_experts)
        if problem is not None:
            col, t, what = problem
            raise InputError(f"{self.path}: column '{col}': row {first_row + t}, {what}")
        if b.phase_T is not None and b.phase_T.size and (b.phase_T.min() < 0 or b.phase_T.max() >= len(PHASES)):
            t = int(np.nonzero((b.phase_T < 0) | (b.phase_T >= len(PHASES)))[0][0])
            raise InputError(f"{self.path}: column 'phase': row {first_row + t} holds {int(b.phase_T[t])}, "
                             f"expected 0 (prefill) or 1 (decode)")

    def _check_nulls(self, cols: dict[str, pa.Array], first_row: int) -> None:
        """A null row (or a null inside a row's list) would turn into garbage numbers: refuse it."""
        for name, col in cols.items():
            if name == "token_id":  # nullable by design: unknown vocabulary ids
                continue
            nulls = col.null_count
            if not nulls and pa.types.is_fixed_size_list(col.type):
                nulls = col.flatten().null_count
                if nulls:
                    width = col.type.list_size
                    t = int(np.nonzero(col.flatten().is_null().to_numpy(zero_copy_only=False))[0][0]) // width
                    raise InputError(f"{self.path}: column '{name}': row {first_row + t} holds a null value")
            if nulls:
                t = int(np.nonzero(col.is_null().to_numpy(zero_copy_only=False))[0][0])
                raise InputError(f"{self.path}: column '{name}': row {first_row + t} is null")

    # -- reading -----------------------------------------------------------------------------------
    @property
    def row_group_tokens(self) -> list[int]:
        """Tokens (rows) of each Parquet row group, in file order (from the footer; nothing is read)."""
        md = self._pf.metadata
        return [md.row_group(i).num_rows for i in range(md.num_row_groups)]

    def iter_batches(
        self,
        batch_size: int = DEFAULT_BATCH,
        fields: Iterable[str] = ("experts", "present"),
        validate: bool = True,
        row_groups: range | None = None,
    ) -> Iterator[RoutingBatch]:
        """Yield ``RoutingBatch``es of at most ``batch_size`` whole tokens, holding only ``fields``.

        ``fields`` is any of: experts, weights, present, seq, position, phase, token, domain. Asking for
        ``present`` from a trace without missing rows gives ``present_TL=None`` (all present); asking for
        ``weights`` from a trace without that column gives 1/K, as a version-1 file stores absent weights.
        ``row_groups``: read only these row groups (a shard of the file; default: all).
        """
        fields = tuple(fields)
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise ValueError(f"unknown trace fields {unknown}; choose from {list(FIELDS)}")
        L, _, K = self.meta.shape
        names = set(self._pf.schema_arrow.names)
        columns = [FIELDS[f] for f in fields if FIELDS[f] in names]
        if not columns:
            columns = ["phase"]
        row = 0
        selected = None
        if row_groups is not None:
            sizes = self.row_group_tokens
            if row_groups.step != 1 or not 0 <= row_groups.start <= row_groups.stop <= len(sizes):
                raise ValueError(f"{self.path}: row groups {row_groups} outside the file's {len(sizes)}")
            row, selected = sum(sizes[:row_groups.start]), list(row_groups)
        # A batch larger than the file reads the file (and a huge batch_size would overflow Arrow's int64).
        batch_size = max(1, min(batch_size, self._pf.metadata.num_rows))
        try:
            for rb in self._pf.iter_batches(batch_size=batch_size, columns=columns, row_groups=selected):
                n = rb.num_rows
                # Without the experts column the batch carries a zero-size placeholder of the right length.
                b = RoutingBatch(experts_TLK=np.zeros((n, 0, 0), dtype=self.meta.id_dtype))
                cols = {name: rb.column(i) for i, name in enumerate(rb.schema.names)}
                if validate:
                    self._check_nulls(cols, row)
                if "experts" in cols:
                    b.experts_TLK = _flat_numpy(cols["experts"]).reshape(n, L, K)
                if "weights" in cols:
                    b.weights_TLK = _flat_numpy(cols["weights"]).astype(np.float32).reshape(n, L, K)
                if "present" in cols:
                    present = _flat_numpy(cols["present"]).astype(bool).reshape(n, L)
                    b.present_TL = None if present.all() else present
                if "seq_id" in cols:
                    b.seq_T = cols["seq_id"].to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
                if "position" in cols:
                    b.position_T = cols["position"].to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
                if "phase" in cols and "phase" in fields:
                    b.phase_T = cols["phase"].to_numpy(zero_copy_only=False).astype(np.int8, copy=False)
                if "token_id" in cols:
                    tok = cols["token_id"]
                    b.token_T = None if tok.null_count == n else tok.fill_null(-1).to_numpy().astype(np.int32)
                if "domain" in cols:
                    b.domain_T = cols["domain"].to_numpy(zero_copy_only=False).astype(np.int16, copy=False)
                if validate:
                    self._check_batch(b, row, "experts" in cols)
                # A version-2 file without the column: 1/K, after the checks (constants within range).
                if "weights" in fields and "weights" not in cols:
                    b.weights_TLK = uniform_weights(n, L, K)
                row += n
                yield b
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{self.path}: cannot read rows after row {row}: file corrupt or truncated "
                             f"({first_line(exc)})") from None

    def read_all(self, fields: Iterable[str] = ALL_FIELDS, validate: bool = True) -> RoutingBatch:
        """The whole trace as one batch (for small traces: tests, the bundled traces)."""
        return concat_batches(list(self.iter_batches(fields=fields, validate=validate)))


def concat_batches(batches: Sequence[RoutingBatch]) -> RoutingBatch:
    """Concatenate batches token-wise; a field is kept only if every batch has it (``present`` is
    materialised where some batches have missing rows and others do not)."""
    if not batches:
        raise ValueError("no batches to concatenate")
    if len(batches) == 1:
        return batches[0]

    def cat(name: str) -> np.ndarray | None:
        vals = [getattr(b, name) for b in batches]
        return None if any(v is None for v in vals) else np.concatenate(vals)

    present = None
    if any(b.present_TL is not None for b in batches):
        present = np.concatenate([b.present_or_ones() for b in batches])
    return RoutingBatch(
        experts_TLK=np.concatenate([b.experts_TLK for b in batches]),
        weights_TLK=cat("weights_TLK"),
        present_TL=present,
        seq_T=cat("seq_T"),
        position_T=cat("position_T"),
        phase_T=cat("phase_T"),
        token_T=cat("token_T"),
        domain_T=cat("domain_T"),
    )


class TraceDataset:
    """Several trace files of the same shape (layers, experts, top-k) read as one.

    Paths may be files or directories (every ``*.parquet`` inside, sorted by name).
    """

    def __init__(self, paths: Sequence[str | os.PathLike] | str | os.PathLike) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                found = sorted(p.glob("*.parquet"))
                if not found:
                    raise InputError(f"{p}: directory holds no *.parquet trace files")
                files.extend(found)
            else:
                files.append(p)
        if not files:
            raise InputError("no trace files given")
        self.readers = [TraceReader(f) for f in files]
        first = self.readers[0]
        for r in self.readers[1:]:
            if r.meta.shape != first.meta.shape:
                raise InputError(
                    f"{r.path}: shape (layers, experts, top_k) = {r.meta.shape} differs from "
                    f"{first.path}: {first.meta.shape}; traces read together must have one shape"
                )
            if r.meta.moe_layer_indices != first.meta.moe_layer_indices:
                raise InputError(
                    f"{r.path}: moe_layer_indices {list(r.meta.moe_layer_indices)} differ from {first.path}: "
                    f"{list(first.meta.moe_layer_indices)}; traces read together must come from one model"
                )
        self.meta = first.meta
        self.num_tokens = sum(r.num_tokens for r in self.readers)
        self.paths = files

    def iter_batches(self, batch_size: int = DEFAULT_BATCH, fields: Iterable[str] = ("experts", "present"),
                     validate: bool = True) -> Iterator[RoutingBatch]:
        fields = tuple(fields)
        for r in self.readers:
            yield from r.iter_batches(batch_size=batch_size, fields=fields, validate=validate)

    def read_all(self, fields: Iterable[str] = ALL_FIELDS, validate: bool = True) -> RoutingBatch:
        return concat_batches(list(self.iter_batches(fields=fields, validate=validate)))


def read_trace(path: str | os.PathLike, fields: Iterable[str] = ALL_FIELDS) -> tuple[TraceMeta, RoutingBatch]:
    """Read a whole (small) trace: its metadata and one batch with ``fields``."""
    r = TraceReader(path)
    return r.meta, r.read_all(fields=fields)


__all__ = [
    "TraceReader",
    "TraceDataset",
    "read_trace",
    "concat_batches",
    "ALL_FIELDS",
    "OPTIONAL_COLUMNS",
]
