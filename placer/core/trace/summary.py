"""``moeplace info``: a short summary of a trace, computed in one streaming pass."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from placer.core.trace.reader import TraceReader
from placer.core.trace.schema import PHASES


def summarize(path: str | os.PathLike, weights: bool = False) -> dict[str, Any]:
    """Shape, tokens, sequences, phases and missing rows of a trace, as a JSON-ready dict. ``weights``: read (and
    so check: finite, >= 0, within float16's range) the gate weights too, which takes about four times as long."""
    r = TraceReader(path)
    m = r.meta
    seq_ids: list[np.ndarray] = []
    phase_counts = np.zeros(len(PHASES), dtype=np.int64)
    missing = 0
    tokens_missing = 0
    missing_per_layer = np.zeros(m.num_layers, dtype=np.int64)
    max_pos = 0
    # Reading the expert ids too validates them (ids outside [0, E) are reported), and so for the weights.
    fields = ("experts", "seq", "phase", "present", "position") + (("weights",) if weights else ())
    for b in r.iter_batches(fields=fields):
        seq_ids.append(np.unique(b.seq_T))
        phase_counts += np.bincount(b.phase_T, minlength=len(PHASES))
        max_pos = max(max_pos, int(b.position_T.max()))
        if b.present_TL is not None:
            absent = ~b.present_TL
            missing += int(absent.sum())
            tokens_missing += int(absent.any(axis=1).sum())
            missing_per_layer += absent.sum(axis=0)
    sequences = int(np.unique(np.concatenate(seq_ids)).size)
    return {
        "file": str(Path(path)),
        "file_bytes": os.path.getsize(path),
        "schema_version": m.schema_version,
        "model_name": m.model_name,
        "model_family": m.model_family,
        "source": m.source,
        "created_at": m.created_at,
        "num_layers": m.num_layers,
        "num_experts": m.num_experts,
        "top_k": m.top_k,
        "moe_layer_indices": list(m.moe_layer_indices),
        "tokens": r.num_tokens,
        "sequences": sequences,
        "max_position": max_pos,
        "phases": {name: int(c) for name, c in zip(PHASES, phase_counts)},
        "missing_token_layers": missing,
        "tokens_with_missing_layers": tokens_missing,
        "missing_per_layer": missing_per_layer.tolist(),
        "row_groups": r._pf.metadata.num_row_groups,
        "gate_weights": "stored" if r.has_weights else "absent (read as 1/K)",
        "weights_checked": bool(weights),
    }
