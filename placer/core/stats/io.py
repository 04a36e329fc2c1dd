"""The stats file: a versioned NumPy ``.npz`` archive (format in ``docs/stats-format.md``).

- ``meta_json``: a 0-d string array holding JSON: ``format`` ("moeplace-stats"), ``format_version`` (1),
  shape, tokens, model name, model layer indices, sources, ``extra``, ``load_only`` and the split names.
- one array per count (``load_LE``, ``load1_LE``, ``coact_LEE``, ``trans_LEE``, ``trans1_LEE``, ``tokens_L``,
  ``pair_tokens_L``), stored in the smallest unsigned type that holds its largest value and read back as
  int64; load-only files hold ``load_LE`` (and ``tokens_L`` when known), as float64 when the loads are
  real-valued (rates or averages; only there, and read back as float64).
- splits as ``split<i>.<array>`` with ``i`` the position of the split's name in ``meta_json["splits"]``.

Written atomically with ``allow_pickle`` never needed to read it.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from placer.core.errors import InputError, first_line
from placer.core.fileio import atomic_path, require_file
from placer.core.stats.core import COUNT_FIELDS, RoutingStats, merge_stats

FORMAT = "moeplace-stats"
FORMAT_VERSION = 1


def _stored(a: np.ndarray) -> np.ndarray:
    """Counts in the smallest unsigned type that holds them; real-valued loads as float64."""
    if a.dtype.kind == "f":
        return a.astype(np.float64)
    top = int(a.max()) if a.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return a.astype(dt)
    return a.astype(np.uint64)


def _meta(s: RoutingStats) -> dict[str, Any]:
    return {"tokens": int(s.tokens), "model_name": s.model_name, "sources": list(s.sources),
            "extra": s.extra, "load_only": s.load_only, "arrays": list(s.counts())}


def save_stats(path: str | os.PathLike, s: RoutingStats, compress: bool = True) -> Path:
    """Write ``s`` (with its splits) to ``path`` atomically."""
    arrays: dict[str, np.ndarray] = {}
    split_names = list(s.splits)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_layers": s.num_layers,
            "num_experts": s.num_experts, "top_k": s.top_k, "moe_layer_indices": list(s.moe_layer_indices),
            **_meta(s), "splits": split_names, "split_meta": [_meta(s.splits[n]) for n in split_names]}
    for name, a in s.counts().items():
        arrays[name] = _stored(a)
    for i, n in enumerate(split_names):
        for name, a in s.splits[n].counts().items():
            arrays[f"split{i}.{name}"] = _stored(a)
    arrays["meta_json"] = np.array(json.dumps(meta))
    # What np.savez_compressed writes, at zlib level 1: counts compress almost as well and 3-4x faster.
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=method, compresslevel=1 if compress else None,
                                                   allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(a), allow_pickle=False)
    return Path(path)


def _shape_of(name: str, L: int, E: int) -> tuple[int, ...]:
    Lm = max(L - 1, 0)
    return {"load_LE": (L, E), "load1_LE": (L, E), "coact_LEE": (L, E, E), "trans_LEE": (Lm, E, E),
            "trans1_LEE": (Lm, E, E), "tokens_L": (L,), "pair_tokens_L": (Lm,)}[name]


def load_stats(path: str | os.PathLike) -> RoutingStats:
    """Read a stats file written by ``save_stats``; any problem is a one-line ``InputError`` naming the file."""
    p = require_file(path, "stats file")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{p}: not a moeplace stats file (.npz): {first_line(exc, 160)}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError(f"{p}: not a moeplace stats file: a single .npy array (for a load matrix use --load)")
    with z:
        if "meta_json" not in z.files:
            raise InputError(f"{p}: no 'meta_json' entry; not a moeplace stats file (arrays: {', '.join(z.files[:8])})")
        try:
            meta = json.loads(str(z["meta_json"]))
        except (ValueError, TypeError) as exc:
            raise InputError(f"{p}: meta_json is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise InputError(f"{p}: meta_json format is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                             f"expected {FORMAT!r}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(f"{p}: format_version is {version!r}; this moeplace reads stats format version "
                             f"{FORMAT_VERSION}")
        for key in ("num_layers", "num_experts", "top_k"):
            v = meta.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{p}: meta_json field '{key}' must be a positive integer, got {v!r}")
        L, E, K = meta["num_layers"], meta["num_experts"], meta["top_k"]

        def read(prefix: str, m: dict[str, Any]) -> RoutingStats:
            counts = {}
            for name in m.get("arrays", []):
                if name not in COUNT_FIELDS:
                    raise InputError(f"{p}: meta_json lists unknown array {name!r}")
                key = prefix + name
                if key not in z.files:
                    raise InputError(f"{p}: array '{key}' is missing")
                try:
                    a = z[key]
                except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:  # object arrays, corrupt entries
                    raise InputError(f"{p}: array '{key}' cannot be read ({first_line(exc, 120)})") from None
                if a.shape != _shape_of(name, L, E):
                    raise InputError(f"{p}: array '{key}' has shape {list(a.shape)}, expected "
                                     f"{list(_shape_of(name, L, E))} for {L} layers x {E} experts")
                if np.issubdtype(a.dtype, np.floating) and name == "load_LE" and m.get("load_only"):
                    if not (np.isfinite(a).all() and (a >= 0).all()):
                        raise InputError(f"{p}: array '{key}' holds values that are not finite and >= 0")
                    counts[name] = a.astype(np.float64)  # real-valued loads (rates, averages)
                    continue
                if not np.issubdtype(a.dtype, np.integer):
                    raise InputError(f"{p}: array '{key}' holds {a.dtype}, expected integer counts")
                counts[name] = a.astype(np.int64)
            if "load_LE" not in counts:
                raise InputError(f"{p}: array '{prefix}load_LE' is missing")
            tokens = m.get("tokens", 0)
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
                raise InputError(f"{p}: meta_json field '{prefix}tokens' must be an integer >= 0, got {tokens!r}")
            if not isinstance(m.get("sources", []), list) or not isinstance(m.get("extra") or {}, dict):
                raise InputError(f"{p}: meta_json fields 'sources' and 'extra' must be a list and an object")
            s = RoutingStats(L, E, K, tokens=tokens, model_name=str(meta.get("model_name", "unknown")),
                             moe_layer_indices=layers, sources=tuple(map(str, m.get("sources", ()))),
                             extra=dict(m.get("extra") or {}), **counts)
            problem = s.inconsistency()
            if problem is not None:
                raise InputError(f"{p}: {prefix or 'counts: '}{problem}; the file was altered or corrupted "
                                 f"(recompute it with `moeplace stats`)")
            return s

        layers = meta.get("moe_layer_indices") or list(range(L))
        if (not isinstance(layers, list) or len(layers) != L
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
                or len(set(layers)) != L):
            raise InputError(f"{p}: meta_json field 'moe_layer_indices' must list {L} distinct layer numbers >= 0, "
                             f"got {layers!r}"[:300])
        layers = tuple(layers)

        s = read("", meta)
        names, split_meta = meta.get("splits", []), meta.get("split_meta", [])
        if len(names) != len(split_meta):
            raise InputError(f"{p}: meta_json lists {len(names)} splits but {len(split_meta)} split_meta entries")
        for i, (n, m) in enumerate(zip(names, split_meta)):
            sub = read(f"split{i}.", m)
            sub.model_name = s.model_name
            s.splits[str(n)] = sub
    return s


def merge_files(paths: Sequence[str | os.PathLike]) -> RoutingStats:
    """The sum of several stats files (equal to the statistics of the concatenated traces)."""
    if not paths:
        raise InputError("no stats files to merge")
    parts = [load_stats(p) for p in paths]
    for path, s in zip(paths[1:], parts[1:]):
        if s.shape != parts[0].shape:
            raise InputError(f"{path}: shape (layers, experts, top_k) = {s.shape} differs from {paths[0]}: "
                             f"{parts[0].shape}; only statistics of one model can be merged")
    return merge_stats(parts)
