"""The moeplace trace format: Parquet, one row per token, the token's routing as an [L, K] block.

See ``docs/trace-format.md`` for the full description. In short:

| column      | Arrow type                                 | meaning                                          |
|-------------|--------------------------------------------|--------------------------------------------------|
| seq_id      | int64                                      | sequence the token belongs to                    |
| position    | int32                                      | position of the token in its sequence            |
| phase       | int8                                       | 0 = prefill, 1 = decode                          |
| token_id    | int32 (nullable, optional column)          | vocabulary id of the token, when known           |
| domain      | int16 (optional column)                    | workload domain (synthetic traces, imports)      |
| experts     | fixed_size_list<uint8/16/32>[L*K]          | chosen expert ids, layer-major, rank order       |
| weights     | fixed_size_list<float16>[L*K] (optional since schema version 2) | their gate weights, same order |
| present     | fixed_size_list<bool>[L] (optional column) | False where the token has no routing at a layer  |

Where ``present`` is False the layer's ``experts``/``weights`` entries are written as 0 and must be ignored.
A trace without ``weights`` (schema version 2: the source returned no gate weights) reads as weights 1/K,
the values a version-1 file stores in that case. The file's schema metadata holds ``TraceMeta`` as JSON under
the key ``moeplace``.

Why one row per token: every per-token quantity moeplace needs (transitions between layers, dispatch
fan-out, hops) reads a token's routing across all layers at once. With one row per token, any batch of
rows carries whole tokens, no join or group-by is needed, and a fixed-size list maps without a copy to a
NumPy ``[T, L, K]`` array. A long format (one row per token and layer) would need a sort and group-by to
put tokens back together, and a streamed batch could cut a token in two.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa

from placer.core.limits import MAX_EXPERTS, MAX_LAYERS, require_at_most

# Version 2 lets the weights column be left out (no gate weights known); a writer stamps the lowest version
# that describes its file (1 when it has the weights column), so that older readers read every file they can.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_KEY = b"moeplace"
# Parquet key-value metadata of facts known only when the file is closed (a JSON object merged into
# ``TraceMeta.extra`` on reading): the Arrow schema's metadata is fixed when the writer opens.
FINAL_EXTRA_KEY = b"moeplace.extra"
PHASES = ("prefill", "decode")
PHASE_PREFILL = 0
PHASE_DECODE = 1

REQUIRED_COLUMNS = ("seq_id", "position", "phase", "experts")  # and "weights" in a version-1 file
OPTIONAL_COLUMNS = ("token_id", "domain", "weights", "present")


def file_version(with_weights: bool) -> int:
    """The schema version a writer stamps: 1 with the weights column, 2 without it."""
    return 1 if with_weights else 2


def uniform_weights(n: int, num_layers: int, top_k: int) -> np.ndarray:
    """[n, L, K] float32 gate weights 1/K as a file stores them (float16), for traces without weights."""
    return np.full((n, num_layers, top_k), np.float32(np.float16(1.0 / top_k)), dtype=np.float32)


def _now_iso() -> str:
    """UTC creation time; ``SOURCE_DATE_EPOCH`` (reproducible builds' convention) fixes it, so that a
    seeded synthetic trace can be reproduced byte for byte."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return now.replace(microsecond=0).isoformat()


def expert_dtype(num_experts: int) -> np.dtype:
    """The smallest unsigned integer type that holds expert ids 0..num_experts-1."""
    if num_experts <= 1 << 8:
        return np.dtype(np.uint8)
    if num_experts <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


@dataclass(frozen=True)
class TraceMeta:
    """File-level metadata of a trace.

    ``moe_layer_indices`` gives, for each of the ``num_layers`` MoE layers, the model's own index of that
    decoder layer (DeepSeek-V3's first MoE layer is decoder layer 3). ``extra`` holds source-specific
    facts (a synthetic trace's planted clusters, a tracer's text files).
    """

    num_layers: int
    num_experts: int
    top_k: int
    model_name: str = "unknown"
    model_family: str = "unknown"
    moe_layer_indices: tuple[int, ...] = ()
    source: str = "unknown"
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_experts", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        require_at_most("num_layers", self.num_layers, MAX_LAYERS, "layers of a model")
        require_at_most("num_experts", self.num_experts, MAX_EXPERTS, "expert ids are stored as uint32")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed num_experts ({self.num_experts})")
        if not self.moe_layer_indices:
            object.__setattr__(self, "moe_layer_indices", tuple(range(self.num_layers)))
        else:
            object.__setattr__(self, "moe_layer_indices", tuple(int(i) for i in self.moe_layer_indices))
        if len(self.moe_layer_indices) != self.num_layers:
            raise ValueError(
                f"moe_layer_indices has {len(self.moe_layer_indices)} entries, num_layers is {self.num_layers}"
            )
        if (min(self.moe_layer_indices) < 0 or max(self.moe_layer_indices) >= MAX_LAYERS
                or len(set(self.moe_layer_indices)) != self.num_layers):
            raise ValueError(f"moe_layer_indices {list(self.moe_layer_indices)} must be distinct layer numbers >= 0")
        if not self.created_at:
            object.__setattr__(self, "created_at", _now_iso())

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.num_layers, self.num_experts, self.top_k)

    @property
    def id_dtype(self) -> np.dtype:
        return expert_dtype(self.num_experts)

    def to_json(self) -> str:
        d = asdict(self)
        d["moe_layer_indices"] = list(self.moe_layer_indices)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TraceMeta":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class RoutingBatch:
    """A batch of whole tokens read from (or to be written to) a trace.

    experts_TLK: [T, L, K] chosen expert ids in rank order (stored dtype: uint8/uint16/uint32)
    weights_TLK: [T, L, K] float32 gate weights (None when the reader was asked not to load them)
    present_TL:  [T, L] bool, False where the token has no routing at that layer; None means all present
    seq_T, position_T, phase_T: sequence id (int64), position (int32), phase (int8: 0 prefill, 1 decode)
    token_T: [T] int32 token ids or None; domain_T: [T] int16 or None
    """

    experts_TLK: np.ndarray
    weights_TLK: np.ndarray | None = None
    present_TL: np.ndarray | None = None
    seq_T: np.ndarray | None = None
    position_T: np.ndarray | None = None
    phase_T: np.ndarray | None = None
    token_T: np.ndarray | None = None
    domain_T: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.experts_TLK.shape[0])

    @property
    def num_tokens(self) -> int:
        return len(self)

    def present_or_ones(self) -> np.ndarray:
        """``present_TL``, materialised as all-True when the batch has no missing rows."""
        if self.present_TL is None:
            return np.ones(self.experts_TLK.shape[:2], dtype=bool)
        return self.present_TL

    def select(self, rows: np.ndarray) -> "RoutingBatch":
        """The tokens ``rows`` (a boolean mask or indices, in the order given), every field kept."""
        return RoutingBatch(*(None if (v := getattr(self, f.name)) is None else v[rows] for f in fields(self)))


# The largest float16: gate weights are stored as float16, so a larger one would be written as infinity.
FLOAT16_MAX = float(np.finfo(np.float16).max)


def routing_problem(b: RoutingBatch, num_experts: int) -> tuple[str, int, str] | None:
    """The first thing wrong with a batch's routing where the token is present, as (column, row in the batch,
    what is wrong), or None: an expert id outside [0, E), an expert listed twice in one token's layer, a gate
    weight that is not finite, negative or above float16's range (``FLOAT16_MAX``). The trace reader and
    writer both check batches with it."""
    ex = b.experts_TLK
    pres = None if b.present_TL is None else b.present_TL[:, :, None]
    # An unsigned type whose largest value is below E (uint8 for 256 experts) cannot hold a bad id.
    unsigned_fits = np.issubdtype(ex.dtype, np.unsignedinteger) and np.iinfo(ex.dtype).max < num_experts
    if ex.size:
        bad = None
        if not unsigned_fits:
            bad = (ex >= num_experts) | (ex < 0) if np.issubdtype(ex.dtype, np.signedinteger) else (ex >= num_experts)
            if pres is not None:
                bad &= pres
        if bad is not None and bad.any():
            t, l, k = (int(i[0]) for i in np.nonzero(bad))
            return "experts", t, (f"layer {l}, rank {k} holds expert id {int(ex[t, l, k])}, "
                                  f"outside [0, {num_experts})")
        dup = _repeats_TL(ex)
        if dup is not None:
            if pres is not None:
                dup &= b.present_TL
            if dup.any():
                t, l = (int(i[0]) for i in np.nonzero(dup))
                return "experts", t, f"layer {l} lists expert {_repeated(ex[t, l])} twice ({ex[t, l].tolist()})"
    w = b.weights_TLK
    if w is not None and w.size:
        bad = ~np.isfinite(w) | (w < 0) | (w > FLOAT16_MAX)
        if pres is not None:
            bad &= pres
        if bad.any():
            t, l, k = (int(i[0]) for i in np.nonzero(bad))
            v = float(w[t, l, k])
            why = ("a non-finite gate weight" if not np.isfinite(v) else "a negative gate weight" if v < 0
                   else f"a gate weight above float16's range ({FLOAT16_MAX:g})")
            return "weights", t, f"layer {l}, rank {k} holds {why}: {v!r}"
    return None


def _repeats_TL(ex: np.ndarray) -> np.ndarray | None:
    """[T, L] True where a token lists one expert twice in a layer (None for top-1)."""
    K = ex.shape[2]
    if K < 2:
        return None
    if K > 16:  # a sort beats K*(K-1)/2 comparisons
        srt = np.sort(ex, axis=2)
        return (srt[:, :, 1:] == srt[:, :, :-1]).any(axis=2)
    cols = [np.ascontiguousarray(ex[:, :, k]) for k in range(K)]
    dup = np.zeros(ex.shape[:2], dtype=bool)
    for i in range(K):
        for j in range(i + 1, K):
            dup |= cols[i] == cols[j]
    return dup


def _repeated(ids: np.ndarray) -> int:
    vals, counts = np.unique(ids, return_counts=True)
    return int(vals[counts > 1][0])


def arrow_schema(meta: TraceMeta, with_token_id: bool, with_domain: bool, with_present: bool,
                 with_weights: bool = True) -> pa.Schema:
    """The Arrow schema of a trace with the given metadata and optional columns (the metadata stored as given:
    ``TraceWriter`` stamps ``schema_version`` with ``file_version``)."""
    L, _, K = meta.shape
    id_type = pa.from_numpy_dtype(meta.id_dtype)
    fields = [
        pa.field("seq_id", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("phase", pa.int8(), nullable=False),
    ]
    if with_token_id:
        fields.append(pa.field("token_id", pa.int32(), nullable=True))
    if with_domain:
        fields.append(pa.field("domain", pa.int16(), nullable=False))
    fields.append(pa.field("experts", pa.list_(pa.field("item", id_type, nullable=False), L * K), nullable=False))
    if with_weights:
        fields.append(pa.field("weights", pa.list_(pa.field("item", pa.float16(), nullable=False), L * K),
                               nullable=False))
    if with_present:
        fields.append(pa.field("present", pa.list_(pa.field("item", pa.bool_(), nullable=False), L), nullable=False))
    return pa.schema(fields, metadata={META_KEY: meta.to_json().encode()})
