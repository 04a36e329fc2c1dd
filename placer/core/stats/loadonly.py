"""Load-only statistics: an expert load matrix ``[layers, experts]`` or an SGLang expert-distribution
``logical_count`` file becomes ``RoutingStats`` holding ``load_LE`` only.

Accepted files:

- ``.npy``: a 2-D array of expert loads (``np.save``).
- ``.csv``: one row per MoE layer, one column per expert, comma-separated (an optional non-numeric header
  row is skipped).
- ``.pt``: a torch tensor ``[layers, experts]``, or SGLang's ``stat`` dump: a dict with ``logical_count``
  of shape ``[steps, layers, experts]`` (``_StatAccumulator.dump`` in ``sglang/srt/eplb/
  expert_distribution.py``: one row per recorded forward pass in its buffer, already all-reduced over
  ranks; ``rank`` and ``average_utilization_rate_over_window`` beside it), summed over steps; older dumps
  hold ``[layers, experts]``.
- ``.json``: ``{"logical_count": [[...] x layers]}`` (or ``[steps, layers, experts]``), the form SGLang's
  ``--init-expert-location`` takes for its own EPLB (``compute_initial_expert_location_metadata`` in
  ``sglang/srt/eplb/expert_location.py``: ``init_by_eplb`` adds a leading steps axis to a 2-D count and
  sums over it); values may be floats.

SGLang counts every decoder layer (``num_layers = config.num_hidden_layers``): all-zero layers of its files
(dense layers such as DeepSeek-V3's first three) are dropped and the kept layers' decoder indices recorded as
``moe_layer_indices``, so an export in model numbering puts them back where they were.

**Counts or rates.** Whole numbers are token counts and stay exact (int64): a layer's row counts (token,
rank) entries, as ``RoutingStats.load_LE`` does, so it sums to top-k x tokens and, with ``top_k`` given,
``tokens_L`` is derived from it. Any other finite, non-negative values (selection frequencies, mean router
probabilities, the average of several windows) are real-valued loads (float64): they serve balance, which
only compares loads, and say that tokens are unknown (``extra["load_values"] = "real"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from placer.core.errors import InputError, first_line
from placer.core.fileio import read_json, require_file
from placer.core.stats.core import RoutingStats

SUFFIXES = (".npy", ".csv", ".pt", ".pth", ".json")
# Whole numbers whose total reaches this are not exact as float64 counts (and near int64's overflow): kept as reals.
_EXACT_FLOAT_INT = 2 ** 53


def _as_loads(a: Any, path: Path, what: str) -> np.ndarray:
    """``a`` as loads: int64 if every value is a whole number (counts), else float64 (rates, averages)."""
    try:
        arr = np.asarray(a.detach().cpu().double().numpy() if hasattr(a, "cpu") and a.is_floating_point()
                         else a.cpu().numpy() if hasattr(a, "cpu") else a)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {what} is not a numeric array ({first_line(exc, 120)})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
                                   or arr.dtype == bool):
        raise InputError(f"{path}: {what} holds {arr.dtype} values, expected expert loads (numbers)")
    if arr.size == 0:
        raise InputError(f"{path}: {what} is empty (shape {list(arr.shape)})")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = tuple(int(i[0]) for i in np.nonzero(bad))
            raise InputError(f"{path}: {what}{list(idx)} = {arr[idx].item()!r}; loads must be finite numbers")
    if (arr < 0).any():
        idx = tuple(int(i[0]) for i in np.nonzero(arr < 0))
        raise InputError(f"{path}: {what}{list(idx)} = {arr[idx].item()!r} is negative; loads are >= 0")
    if np.issubdtype(arr.dtype, np.floating) and not (arr == np.round(arr)).all():
        return arr.astype(np.float64)
    # Whole numbers are counts while their total stays exact in float64 (and far from int64's overflow).
    if arr.astype(np.float64).sum() >= _EXACT_FLOAT_INT:
        return arr.astype(np.float64)
    return arr.astype(np.int64)


def is_real_valued(load: np.ndarray) -> bool:
    """True for real-valued loads (rates, averages), False for token counts."""
    return np.issubdtype(np.asarray(load).dtype, np.floating)


def _matrix(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim != 2:
        raise InputError(f"{path}: {what} has shape {list(arr.shape)}, expected [layers, experts]")
    return arr


def _read_csv(path: Path) -> np.ndarray:
    """A comma-separated matrix: a byte-order mark is ignored, a first row that is not all numbers is a header,
    and every other row must be numbers, as many as the first numeric row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file; expected a comma-separated matrix of numbers") from None
    rows = [(i + 1, [f.strip() for f in line.split(",")]) for i, line in enumerate(text.splitlines()) if line.strip()]
    if rows and not _numeric(rows[0][1]):
        rows = rows[1:]  # a header row
    if not rows:
        raise InputError(f"{path}: not a comma-separated matrix of numbers: no rows of numbers")
    width = len(rows[0][1])
    values = []
    for line, fields in rows:
        if len(fields) != width:
            raise InputError(f"{path}: not a comma-separated matrix of numbers: line {line} has {len(fields)} "
                             f"values, the first row of numbers has {width}")
        if not _numeric(fields):
            bad = next(f for f in fields if not _numeric([f]))
            raise InputError(f"{path}: not a comma-separated matrix of numbers: line {line}: {bad!r} is not a "
                             f"number")
        values.append([int(f) if f.lstrip("+-").isdigit() else float(f) for f in fields])
    exact = all(isinstance(v, int) and abs(v) < 2 ** 63 for r in values for v in r)
    return np.array(values, dtype=np.int64 if exact else np.float64)


def _numeric(fields: list[str]) -> bool:
    try:
        for f in fields:
            float(f)
    except ValueError:
        return False
    return True


def _logical_count(data: dict, path: Path, source: str) -> tuple[np.ndarray, dict[str, Any]]:
    """SGLang's ``logical_count`` ([steps, layers, experts] or [layers, experts]), summed over steps."""
    if "logical_count" not in data:
        if "records" in data:
            raise InputError(f"{path}: an SGLang per_token dump (records), not a stat dump; convert it with "
                             f"`moeplace import` and compute full statistics from the trace")
        if "phy2log" in data:
            raise InputError(f"{path}: a moeplace placement, not expert loads")
        if "physical_to_logical_map" in data:
            raise InputError(f"{path}: an SGLang placement (physical_to_logical_map), not expert loads; give it to "
                             f"the commands that take a placement (`moeplace import-placement --format sglang`)")
        raise InputError(f"{path}: no 'logical_count' key; not an SGLang expert-distribution file "
                         f"(found: {', '.join(map(str, data)) or 'nothing'})")
    raw = data["logical_count"]
    if isinstance(raw, list):
        try:
            raw = np.array(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path}: field 'logical_count' is not a matrix of numbers (rows of different "
                             f"lengths or non-numeric values)") from None
    counts = _as_loads(raw, path, "logical_count")
    if counts.ndim == 3:
        steps = counts.shape[0]
        counts = counts.sum(axis=0)
    elif counts.ndim == 2:
        steps = None
    else:
        raise InputError(f"{path}: logical_count has shape {list(counts.shape)}, expected "
                         f"[steps, layers, experts] or [layers, experts]")
    info: dict[str, Any] = {"load_source": source, "steps": steps}
    rate = data.get("average_utilization_rate_over_window")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        info["average_utilization_rate_over_window"] = float(rate)
    return counts, info


def _read_pt(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    # lazy: torch takes seconds to import
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        msg = first_line(exc, 160)
        raise InputError(f"{path}: not a readable torch file ({msg})") from None
    if isinstance(data, dict):
        return _logical_count(data, path, "sglang-stat")
    if hasattr(data, "shape"):
        return _matrix(_as_loads(data, path, "tensor"), path, "tensor"), {"load_source": "pt"}
    raise InputError(f"{path}: holds a {type(data).__name__}; expected a [layers, experts] tensor or an SGLang "
                     f"stat dump (a dict with logical_count)")


def _read_json(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    data = read_json(path, "SGLang logical_count")
    if not isinstance(data, dict):
        raise InputError(f"{path}: holds a JSON {type(data).__name__}; expected an object with logical_count "
                         f"(SGLang's --init-expert-location loads)")
    return _logical_count(data, path, "sglang-json")


def load_only_stats(path: str | os.PathLike, top_k: int | None = None) -> RoutingStats:
    """Load-only ``RoutingStats`` from a load matrix (.npy/.csv/.pt) or an SGLang logical_count file (.pt/.json)."""
    p = require_file(path, "load file")
    suffix = p.suffix.lower()
    notes: list[str] = []
    layers = None
    if suffix == ".npy":
        try:
            raw = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{p}: not a readable .npy array ({first_line(exc, 160)})") from None
        load, info = _matrix(_as_loads(raw, p, "array"), p, "array"), {"load_source": "npy"}
    elif suffix == ".csv":
        load, info = _matrix(_as_loads(_read_csv(p), p, "matrix"), p, "matrix"), {"load_source": "csv"}
    elif suffix in (".pt", ".pth", ".json"):
        load, info = _read_pt(p) if suffix != ".json" else _read_json(p)
        if info["load_source"].startswith("sglang"):
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
        raise InputError(f"{p}: unknown load file type '{p.suffix}'; expected .npy, .csv, .pt or .json "
                         f"(a [layers, experts] matrix or an SGLang logical_count file)")
    L, E = load.shape
    if top_k is not None and not 1 <= top_k <= E:
        raise InputError(f"--top-k {top_k} must be between 1 and the file's {E} experts")
    tokens_L = None
    tokens = 0
    real = is_real_valued(load)
    if real:
        info["load_values"] = "real"
        notes.append("real-valued loads (rates or averages, not token counts): balance only, tokens unknown")
    elif top_k is not None:
        rows = load.sum(axis=1)
        if (rows % top_k).any():
            l = int(np.nonzero(rows % top_k)[0][0])
            notes.append(f"layer {l} load {int(rows[l])} is not a multiple of top-k {top_k}: tokens unknown")
        else:
            tokens_L = rows // top_k
            tokens = int(tokens_L.max())
    if top_k is None:
        notes.append("top-k unknown (give --top-k): tokens per layer unknown, top_k recorded as 1")
    extra = {**info, "top_k_known": top_k is not None}
    if notes:
        extra["notes"] = notes
    return RoutingStats(L, E, top_k or 1, load_LE=load, tokens=tokens, tokens_L=tokens_L,
                        model_name="unknown", moe_layer_indices=tuple(layers) if layers else tuple(range(L)),
                        sources=(str(p),), extra=extra)
