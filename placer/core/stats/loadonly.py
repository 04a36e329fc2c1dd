"""Load-only statistics: an expert load matrix ``[layers, experts]`` or an SGLang expert-distribution
``stat`` dump becomes ``RoutingStats`` holding ``load_LE`` only.

Accepted files:

- ``.npy``: a 2-D array of token counts (``np.save``).
- ``.csv``: one row per MoE layer, one column per expert, comma-separated (an optional non-numeric header
  row is skipped).
- ``.pt``: a torch tensor ``[layers, experts]``, or SGLang's ``stat`` dump: a dict with ``logical_count``
  of shape ``[steps, layers, experts]`` (``_StatAccumulator.dump`` in ``sglang/srt/eplb/
  expert_distribution.py``: one row per recorded forward pass in its buffer, already all-reduced over
  ranks), summed over steps; older dumps hold ``[layers, experts]``. SGLang counts every decoder layer:
  all-zero layers (dense layers such as DeepSeek-V3's first three) are dropped and the kept layers'
  indices recorded as ``moe_layer_indices``.

Loads count (token, rank) entries, as ``RoutingStats.load_LE`` does, so a layer's row sums to top-k x
tokens; with ``top_k`` given, ``tokens_L`` is derived from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from placer.core.errors import InputError, first_line
from placer.core.fileio import require_file
from placer.core.stats.core import RoutingStats

SUFFIXES = (".npy", ".csv", ".pt", ".pth")


def _as_counts(a: Any, path: Path, what: str) -> np.ndarray:
    try:
        arr = np.asarray(a.cpu().numpy() if hasattr(a, "cpu") else a)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {what} is not a numeric array ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
                                   or arr.dtype == bool):
        raise InputError(f"{path}: {what} holds {arr.dtype} values, expected token counts")
    if arr.size == 0:
        raise InputError(f"{path}: {what} is empty (shape {list(arr.shape)})")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            idx = tuple(int(i[0]) for i in np.nonzero(bad))
            raise InputError(f"{path}: {what}{list(idx)} = {arr[idx].item()!r} is not a whole number; loads must be token counts")
    if (arr < 0).any():
        idx = tuple(int(i[0]) for i in np.nonzero(arr < 0))
        raise InputError(f"{path}: {what}{list(idx)} = {arr[idx].item()!r} is negative; loads must be token counts")
    return arr.astype(np.int64)


def _matrix(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim != 2:
        raise InputError(f"{path}: {what} has shape {list(arr.shape)}, expected [layers, experts]")
    return arr


def _read_csv(path: Path) -> np.ndarray:
    for skip in (0, 1):
        try:
            arr = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)
            break
        except ValueError as exc:
            err = exc
    else:
        raise InputError(f"{path}: not a comma-separated matrix of numbers ({first_line(err, 120)})")
    return arr


def _read_pt(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        msg = first_line(exc, 160)
        raise InputError(f"{path}: not a readable torch file ({msg})") from None
    if isinstance(data, dict):
        if "logical_count" not in data:
            if "records" in data:
                raise InputError(f"{path}: an SGLang per_token dump (records), not a stat dump; convert it with "
                                 f"`moeplace import` and compute full statistics from the trace")
            raise InputError(f"{path}: no 'logical_count' key; not an SGLang stat dump "
                             f"(found: {', '.join(map(str, data))})")
        counts = _as_counts(data["logical_count"], path, "logical_count")
        if counts.ndim == 3:
            steps = counts.shape[0]
            counts = counts.sum(axis=0)
        elif counts.ndim == 2:
            steps = None
        else:
            raise InputError(f"{path}: logical_count has shape {list(counts.shape)}, expected "
                             f"[steps, layers, experts] or [layers, experts]")
        info: dict[str, Any] = {"load_source": "sglang-stat", "steps": steps}
        rate = data.get("average_utilization_rate_over_window")
        if rate is not None:
            info["average_utilization_rate_over_window"] = float(rate)
        return counts, info
    if hasattr(data, "shape"):
        return _matrix(_as_counts(data, path, "tensor"), path, "tensor"), {"load_source": "pt"}
    raise InputError(f"{path}: holds a {type(data).__name__}; expected a [layers, experts] tensor or an SGLang "
                     f"stat dump (a dict with logical_count)")


def load_only_stats(path: str | os.PathLike, top_k: int | None = None) -> RoutingStats:
    """Load-only ``RoutingStats`` from a load matrix (.npy/.csv/.pt) or an SGLang stat dump (.pt)."""
    p = require_file(path, "load file")
    suffix = p.suffix.lower()
    notes: list[str] = []
    layers = None
    if suffix == ".npy":
        try:
            raw = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}: not a readable .npy array ({first_line(exc, 160)})") from None
        load, info = _matrix(_as_counts(raw, p, "array"), p, "array"), {"load_source": "npy"}
    elif suffix == ".csv":
        load, info = _matrix(_as_counts(_read_csv(p), p, "matrix"), p, "matrix"), {"load_source": "csv"}
    elif suffix in (".pt", ".pth"):
        load, info = _read_pt(p)
        if info["load_source"] == "sglang-stat":
            used = load.sum(axis=1) > 0
            if not used.any():
                raise InputError(f"{p}: logical_count is all zero; the dump recorded no tokens")
            if not used.all():
                layers = [int(i) for i in np.nonzero(used)[0]]
                notes.append(f"{int((~used).sum())} all-zero layers of {used.size} dropped as dense layers; "
                             f"kept model layers {layers[0]}..{layers[-1]}")
                load = load[used]
    elif suffix == ".npz":
        raise InputError(f"{p}: a stats file, not a load file: give it as an input (`moeplace stats {p.name}`), "
                         f"not with --load")
    else:
        raise InputError(f"{p}: unknown load file type '{p.suffix}'; expected .npy, .csv or .pt "
                         f"(a [layers, experts] matrix or an SGLang stat dump)")
    L, E = load.shape
    if top_k is not None and not 1 <= top_k <= E:
        raise InputError(f"--top-k {top_k} must be between 1 and the file's {E} experts")
    tokens_L = None
    tokens = 0
    if top_k is not None:
        rows = load.sum(axis=1)
        if (rows % top_k).any():
            l = int(np.nonzero(rows % top_k)[0][0])
            notes.append(f"layer {l} load {int(rows[l])} is not a multiple of top-k {top_k}: tokens unknown")
        else:
            tokens_L = rows // top_k
            tokens = int(tokens_L.max())
    else:
        notes.append("top-k unknown (give --top-k): tokens per layer unknown, top_k recorded as 1")
    extra = {**info, "top_k_known": top_k is not None}
    if notes:
        extra["notes"] = notes
    return RoutingStats(L, E, top_k or 1, load_LE=load, tokens=tokens, tokens_L=tokens_L,
                        model_name="unknown", moe_layer_indices=tuple(layers) if layers else tuple(range(L)),
                        sources=(str(p),), extra=extra)
