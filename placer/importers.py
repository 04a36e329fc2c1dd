"""Turn routing logs written by other tools into moeplace traces.

Two sources:

- **Long format** (JSONL, CSV or Parquet): one record per token per MoE layer, with fields for the layer,
  the token, its chosen experts (a list, or in CSV a string such as ``"[3, 5]"``, ``"3 5"`` or ``"3;5"``),
  optionally their gate weights, the sequence, the position and the phase. A token is identified by
  (sequence, token); tokens are ordered by sequence, then token. Layers are the distinct values of the
  layer field, sorted; their values are recorded as the model's layer indices.
- **SGLang per-token dumps**: the ``.pt`` files SGLang's expert distribution recorder writes in
  ``per_token`` mode (``records`` with ``topk_ids_of_layer`` [layers, tokens, 8] per forward pass, and
  ``last_physical_to_logical_map``). Physical expert ids are mapped back to logical ids; layers whose ids
  are all -1 (dense layers) are dropped; unused top-k columns (-1) are dropped. SGLang does not log gate
  weights (they are set to 1/K) nor request ids: each prefill segment (``extend_seq_lens``) becomes one
  sequence and each decode-pass token a sequence of its own.

Logs often drop rows. A token missing at some layers keeps ``present = False`` there: it is reported by
``moeplace info`` and never paired with another token's routing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from placer.core.errors import InputError, first_line
from placer.core.fileio import require_file
from placer.core.trace.schema import PHASE_DECODE, PHASE_PREFILL, RoutingBatch, TraceMeta


@dataclass(frozen=True)
class FieldMap:
    """Which record fields hold what (the long format); ``None`` for an optional field means its default
    name is used when present and skipped when absent."""

    layer: str = "layer"
    token: str = "token"
    experts: str = "experts"
    weights: str | None = None
    sequence: str | None = None
    position: str | None = None
    phase: str | None = None

    DEFAULTS = {"weights": "weights", "sequence": "sequence", "position": "position", "phase": "phase"}
    OPTIONS = {"layer": "--layer-field", "token": "--token-field", "experts": "--experts-field",
               "weights": "--weights-field", "sequence": "--sequence-field", "position": "--position-field",
               "phase": "--phase-field"}


@dataclass
class ImportReport:
    """What an import found, for the summary."""

    source_format: str
    records: int = 0
    tokens: int = 0
    missing_token_layers: int = 0
    tokens_with_missing_layers: int = 0
    num_experts_inferred: bool = False
    weights_from_source: bool = True
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Long format
# ---------------------------------------------------------------------------------------------------
def _read_table(path: Path) -> pa.Table:
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz")):
            return pj.read_json(path)
        if suffix.endswith((".csv", ".csv.gz", ".tsv")):
            parse = pc.ParseOptions(delimiter="\t") if suffix.endswith(".tsv") else None
            return pc.read_csv(path, parse_options=parse)
        if suffix.endswith((".parquet", ".pq")):
            return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        msg = first_line(exc)
        raise InputError(f"{path}: cannot parse as {suffix.lstrip('.')} ({msg})") from None
    raise InputError(f"{path}: unknown log format '{path.suffix}'; expected .jsonl, .csv or .parquet "
                     f"(or an SGLang per-token dump .pt with --format sglang)")


def _column(table: pa.Table, path: Path, name: str, option: str, required: bool) -> pa.ChunkedArray | None:
    if name in table.column_names:
        return table.column(name)
    if required:
        raise InputError(f"{path}: field '{name}' ({option}) not found; the records have fields: "
                         f"{', '.join(table.column_names)}")
    return None


_SPLIT = re.compile(r"[\s,;|]+")


def _lists(col: pa.ChunkedArray, path: Path, name: str, kind: type) -> tuple[np.ndarray, np.ndarray]:
    """A list-valued field as (flat values, row lengths); strings are parsed as lists of numbers."""
    arr = col.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            row = int(np.nonzero(arr.is_null().to_numpy(zero_copy_only=False))[0][0])
            raise InputError(f"{path}: record {row}: field '{name}' is empty (null)")
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        flat = arr.flatten()
        if flat.null_count:
            raise InputError(f"{path}: field '{name}' holds a null inside a list")
        values = flat.to_numpy(zero_copy_only=False)
        return values, lengths
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        parts = []
        for i, s in enumerate(arr.to_pylist()):
            if s is None:
                raise InputError(f"{path}: record {i}: field '{name}' is empty")
            toks = [t for t in _SPLIT.split(s.strip().strip("[]()")) if t]
            try:
                parts.append(np.array([kind(t) for t in toks]))
            except ValueError:
                raise InputError(f"{path}: record {i}: field '{name}' = {s!r} is not a list of numbers") from None
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        values = np.concatenate(parts) if parts else np.zeros(0)
        return values, lengths
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        values = arr.to_numpy(zero_copy_only=False)
        return values, np.ones(len(values), dtype=np.int64)
    raise InputError(f"{path}: field '{name}' has type {arr.type}; expected a list of numbers")


def _keys(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """An identifying field (token, sequence) as int64 codes that keep the values' order."""
    values = col.to_numpy(zero_copy_only=False) if col.null_count == 0 else None
    if values is None:
        raise InputError(f"{path}: field '{name}' has {col.null_count} empty values")
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    codes, _ = pd.factorize(pd.Series(values), sort=True)
    return codes.astype(np.int64)


def _phase_codes(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    values = col.to_numpy(zero_copy_only=False)
    if np.issubdtype(values.dtype, np.integer):
        bad = ~np.isin(values, [0, 1])
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise InputError(f"{path}: record {i}: field '{name}' = {values[i]}, expected 0/1 or prefill/decode")
        return values.astype(np.int8)
    lowered = pd.Series(values).astype(str).str.lower()
    mapping = {"prefill": PHASE_PREFILL, "extend": PHASE_PREFILL, "decode": PHASE_DECODE}
    codes = lowered.map(mapping)
    if codes.isna().any():
        i = int(np.nonzero(codes.isna().to_numpy())[0][0])
        raise InputError(f"{path}: record {i}: field '{name}' = {values[i]!r}, expected prefill or decode")
    return codes.to_numpy().astype(np.int8)


def import_long(
    paths: Sequence[str | Path],
    fields: FieldMap = FieldMap(),
    num_experts: int | None = None,
    top_k: int | None = None,
    model_name: str = "unknown",
) -> tuple[TraceMeta, RoutingBatch, ImportReport]:
    """Read long-format routing logs (one record per token per layer) into one in-memory batch."""
    tables = []
    for p in map(Path, paths):
        require_file(p, "routing log")
        t = _read_table(p)
        if t.num_rows == 0:
            raise InputError(f"{p}: the log has no records")
        tables.append((p, t))
    path = tables[0][0]
    resolved = {}
    for attr in ("layer", "token", "experts", "weights", "sequence", "position", "phase"):
        explicit = getattr(fields, attr)
        name = explicit if explicit is not None else FieldMap.DEFAULTS[attr]
        # layer, token and experts are always required; an optional field is required once named.
        resolved[attr] = (name, attr in ("layer", "token", "experts") or explicit is not None)
    # Every file must agree on the fields present.
    cols: dict[str, list] = {a: [] for a in resolved}
    for p, t in tables:
        for attr, (name, required) in resolved.items():
            cols[attr].append(_column(t, p, name, FieldMap.OPTIONS[attr], required))
    for attr in resolved:
        have = [c is not None for c in cols[attr]]
        if any(have) and not all(have):
            missing = tables[have.index(False)][0]
            raise InputError(f"{missing}: field '{resolved[attr][0]}' is missing here but present in other logs")
    report = ImportReport(source_format="long")
    n_records = sum(t.num_rows for _, t in tables)
    report.records = n_records

    def cat(attr):
        return None if cols[attr][0] is None else pa.chunked_array(
            [c.combine_chunks().cast(cols[attr][0].type) if c.type != cols[attr][0].type else c.combine_chunks()
             for c in cols[attr]])

    layer_col, token_col, experts_col = cat("layer"), cat("token"), cat("experts")
    layer_name, token_name, experts_name = resolved["layer"][0], resolved["token"][0], resolved["experts"][0]
    if not pa.types.is_integer(layer_col.type):
        raise InputError(f"{path}: field '{layer_name}' has type {layer_col.type}, expected integer layer indices")
    if layer_col.null_count:
        row = int(np.nonzero(layer_col.is_null().to_numpy(zero_copy_only=False))[0][0])
        raise InputError(f"{path}: record {row}: field '{layer_name}' ({FieldMap.OPTIONS['layer']}) is missing")
    layer_vals = layer_col.to_numpy(zero_copy_only=False).astype(np.int64)
    if (layer_vals < 0).any():
        row = int(np.nonzero(layer_vals < 0)[0][0])
        raise InputError(f"{path}: record {row}: field '{layer_name}' = {int(layer_vals[row])}; layer indices "
                         f"are >= 0")
    moe_layers = np.unique(layer_vals)
    layer_idx = np.searchsorted(moe_layers, layer_vals)
    L = len(moe_layers)

    # Experts: one list per record, all of one length K.
    ex_flat, ex_len = _lists(experts_col, path, experts_name, int)
    K = int(top_k) if top_k else int(ex_len[0])
    bad = np.nonzero(ex_len != K)[0]
    if bad.size:
        i = int(bad[0])
        src = "--top-k" if top_k else "record 0"
        raise InputError(f"{path}: record {i}: field '{experts_name}' has {int(ex_len[i])} expert ids, "
                         f"expected top_k = {K} (from {src})")
    if not np.issubdtype(ex_flat.dtype, np.integer):
        if not np.all(np.mod(ex_flat, 1) == 0):
            raise InputError(f"{path}: field '{experts_name}' holds non-integer expert ids")
    ex = ex_flat.astype(np.int64).reshape(n_records, K)
    if (ex < 0).any():
        r, k = (int(v[0]) for v in np.nonzero(ex < 0))
        raise InputError(f"{path}: record {r}: field '{experts_name}' holds expert id {int(ex[r, k])}, "
                         f"outside [0, num_experts)")
    if num_experts is None:
        E = int(ex.max()) + 1
        report.num_experts_inferred = True
        report.notes.append(f"num_experts inferred as {E} (largest id + 1); pass --num-experts if the model has more")
    else:
        E = int(num_experts)
        if (ex >= E).any():
            r, k = (int(v[0]) for v in np.nonzero(ex >= E))
            raise InputError(f"{path}: record {r}: field '{experts_name}' holds expert id {int(ex[r, k])}, "
                             f"outside [0, {E}) (--num-experts {E})")
    if K > E:
        raise InputError(f"{path}: top_k ({K}) exceeds num_experts ({E})")
    dup_rows = np.nonzero((np.sort(ex, axis=1)[:, 1:] == np.sort(ex, axis=1)[:, :-1]).any(axis=1))[0]
    if dup_rows.size:
        i = int(dup_rows[0])
        raise InputError(f"{path}: record {i}: field '{experts_name}' = {ex[i].tolist()} repeats an expert")

    # Weights (optional).
    wcol = cat("weights")
    if wcol is not None:
        w_flat, w_len = _lists(wcol, path, resolved["weights"][0], float)
        bad = np.nonzero(w_len != K)[0]
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{path}: record {i}: field '{resolved['weights'][0]}' has {int(w_len[i])} "
                             f"weights, expected {K}")
        w = w_flat.astype(np.float32).reshape(n_records, K)
    else:
        w = np.full((n_records, K), 1.0 / K, dtype=np.float32)
        report.weights_from_source = False
        report.notes.append(f"no '{resolved['weights'][0]}' field: gate weights set to 1/{K}")

    # Token identity: (sequence, token), ordered.
    tok = _keys(token_col, path, token_name)
    scol = cat("sequence")
    seq = _keys(scol, path, resolved["sequence"][0]) if scol is not None else np.zeros(n_records, dtype=np.int64)
    pairs = np.stack([seq, tok], axis=1)
    uniq, tindex = np.unique(pairs, axis=0, return_inverse=True)
    tindex = tindex.reshape(-1)
    T = len(uniq)
    slot = tindex * L + layer_idx
    order = np.argsort(slot, kind="stable")
    dup = np.nonzero(np.diff(slot[order]) == 0)[0]
    if dup.size:
        a, b = int(order[dup[0]]), int(order[dup[0] + 1])
        raise InputError(f"{path}: records {a} and {b} both route token ({resolved['sequence'][0]}="
                         f"{seq[a]}, {token_name}={tok[a]}) at {layer_name} {int(layer_vals[a])}")

    experts = np.zeros((T, L, K), dtype=np.int64)
    weights = np.zeros((T, L, K), dtype=np.float32)
    present = np.zeros((T, L), dtype=bool)
    experts[tindex, layer_idx] = ex
    weights[tindex, layer_idx] = w
    present[tindex, layer_idx] = True

    seq_T = uniq[:, 0]
    pcol = cat("position")
    if pcol is not None:
        pos_rec = pcol.to_numpy(zero_copy_only=False).astype(np.int64)
        position = np.zeros(T, dtype=np.int64)
        position[tindex] = pos_rec
    else:
        # Rank of the token inside its sequence, in token order.
        starts = np.r_[0, np.nonzero(np.diff(seq_T))[0] + 1]
        position = np.arange(T) - np.repeat(starts, np.diff(np.r_[starts, T]))
    phcol = cat("phase")
    phase = np.zeros(T, dtype=np.int8)
    if phcol is not None:
        phase[tindex] = _phase_codes(phcol, path, resolved["phase"][0])

    report.tokens = T
    report.missing_token_layers = int((~present).sum())
    report.tokens_with_missing_layers = int((~present).any(axis=1).sum())
    meta = TraceMeta(
        num_layers=L, num_experts=E, top_k=K, model_name=model_name, model_family="imported",
        moe_layer_indices=tuple(int(v) for v in moe_layers), source=f"import:long:{','.join(p.name for p, _ in tables)}",
        extra={"import": {"format": "long", "records": n_records, "fields": {a: n for a, (n, _) in resolved.items()},
                          "num_experts_inferred": report.num_experts_inferred,
                          "weights_from_source": report.weights_from_source}},
    )
    batch = RoutingBatch(
        experts_TLK=experts.astype(meta.id_dtype), weights_TLK=weights,
        present_TL=None if present.all() else present, seq_T=seq_T, position_T=position.astype(np.int32),
        phase_T=phase,
    )
    return meta, batch, report


# ---------------------------------------------------------------------------------------------------
# SGLang per-token dumps
# ---------------------------------------------------------------------------------------------------
def import_sglang_per_token(
    paths: Sequence[str | Path], num_experts: int | None = None, model_name: str = "unknown"
) -> tuple[TraceMeta, RoutingBatch, ImportReport]:
    """Read SGLang ``per_token`` expert-distribution dumps (``.pt``) into one in-memory batch."""
    # lazy: torch takes seconds to import
    import torch

    records = []
    p2l = None
    for p in map(Path, paths):
        require_file(p, "SGLang dump")
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            msg = first_line(exc, 160)
            raise InputError(f"{p}: not a readable torch file ({msg})") from None
        if not isinstance(data, dict) or "records" not in data:
            keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise InputError(f"{p}: no 'records' key; not an SGLang per_token dump (found: {keys}). "
                             f"A 'stat' dump (logical_count) holds loads only: use it with `moeplace stats --load`")
        for i, rec in enumerate(data["records"]):
            if not isinstance(rec, dict) or "topk_ids_of_layer" not in rec:
                raise InputError(f"{p}: records[{i}] has no 'topk_ids_of_layer'")
            records.append((p, i, rec))
        m = data.get("last_physical_to_logical_map")
        if m is not None:
            m = np.asarray(m.cpu() if hasattr(m, "cpu") else m, dtype=np.int64)
            if p2l is not None and m.shape != p2l.shape:
                raise InputError(f"{p}: last_physical_to_logical_map shape {m.shape} differs from other dumps {p2l.shape}")
            p2l = m
    if not records:
        raise InputError(f"{paths[0]}: the dump has no records")
    records.sort(key=lambda r: (int(r[2].get("forward_pass_id", 0)), int(r[2].get("rank", 0))))
    blocks = [np.asarray(r[2]["topk_ids_of_layer"], dtype=np.int64) for r in records]
    nl = {b.shape[0] for b in blocks}
    if len(nl) != 1 or any(b.ndim != 3 for b in blocks):
        raise InputError(f"{records[0][0]}: topk_ids_of_layer blocks have differing shapes "
                         f"{sorted({b.shape for b in blocks})}")
    ids = np.concatenate(blocks, axis=1)  # [all layers, tokens, 8]
    layer_used = (ids >= 0).any(axis=(1, 2))
    k_used = (ids >= 0).any(axis=(0, 1))
    moe_layers = np.nonzero(layer_used)[0]
    if moe_layers.size == 0:
        raise InputError(f"{records[0][0]}: every topk id is -1; nothing was recorded")
    K = int(np.nonzero(k_used)[0].max()) + 1
    ids = ids[moe_layers][:, :, :K].transpose(1, 0, 2)  # [T, L, K]
    present = (ids >= 0).all(axis=2)
    if p2l is not None:
        p2l_moe = p2l[moe_layers]
        P = p2l_moe.shape[1]
        if (ids >= P).any():
            raise InputError(f"{records[0][0]}: physical expert id {int(ids.max())} outside the map's {P} slots")
        logical = p2l_moe[np.arange(len(moe_layers))[None, :, None], np.where(ids >= 0, ids, 0)]
        ids = np.where(ids >= 0, logical, -1)
        E = int(p2l_moe.max()) + 1 if num_experts is None else int(num_experts)
    else:
        E = int(ids.max()) + 1 if num_experts is None else int(num_experts)
    report = ImportReport(source_format="sglang-per-token", weights_from_source=False,
                          num_experts_inferred=num_experts is None)
    if (ids >= E).any():
        raise InputError(f"{records[0][0]}: expert id {int(ids.max())} outside [0, {E}) (--num-experts {E})")
    T = ids.shape[0]
    seq = np.empty(T, dtype=np.int64)
    pos = np.empty(T, dtype=np.int64)
    phase = np.empty(T, dtype=np.int8)
    tok = np.full(T, -1, dtype=np.int64)
    off = 0
    next_seq = 0
    for p, i, rec in records:
        n = int(np.asarray(rec["topk_ids_of_layer"]).shape[1])
        positions = np.asarray(rec.get("positions", np.arange(n)), dtype=np.int64)[:n]
        input_ids = rec.get("input_ids")
        if input_ids is not None:
            tok[off:off + n] = np.asarray(input_ids, dtype=np.int64)[:n]
        pos[off:off + n] = positions if len(positions) == n else np.arange(n)
        seg = rec.get("extend_seq_lens")
        if seg is None:  # decode pass: one token per request, requests not identified
            seq[off:off + n] = np.arange(next_seq, next_seq + n)
            phase[off:off + n] = PHASE_DECODE
            next_seq += n
        else:
            seg = [int(s) for s in seg]
            if sum(seg) != n:
                raise InputError(f"{p}: records[{i}]: extend_seq_lens sum to {sum(seg)}, the pass has {n} tokens")
            seq[off:off + n] = np.repeat(np.arange(next_seq, next_seq + len(seg)), seg)
            phase[off:off + n] = PHASE_PREFILL
            next_seq += len(seg)
        off += n
    report.records = len(records)
    report.tokens = T
    report.missing_token_layers = int((~present).sum())
    report.tokens_with_missing_layers = int((~present).any(axis=1).sum())
    report.notes.append(f"SGLang dumps hold no gate weights: set to 1/{K}")
    report.notes.append(f"{len(moe_layers)} MoE layers of {p2l.shape[0] if p2l is not None else len(layer_used)} "
                        f"decoder layers kept (all -1 layers dropped)")
    meta = TraceMeta(
        num_layers=len(moe_layers), num_experts=E, top_k=K, model_name=model_name, model_family="imported",
        moe_layer_indices=tuple(int(v) for v in moe_layers),
        source=f"import:sglang-per-token:{','.join(sorted({r[0].name for r in records}))}",
        extra={"import": {"format": "sglang-per-token", "records": len(records), "weights_from_source": False}},
    )
    batch = RoutingBatch(
        experts_TLK=np.where(ids >= 0, ids, 0).astype(meta.id_dtype),
        weights_TLK=np.where(ids >= 0, 1.0 / K, 0.0).astype(np.float32),
        present_TL=None if present.all() else present,
        seq_T=seq, position_T=pos.astype(np.int32), phase_T=phase,
        token_T=tok.astype(np.int32) if (tok >= 0).any() else None,
    )
    return meta, batch, report
