"""Reading and writing the containers the formats use (JSON, torch ``.pt``, NumPy ``.npz``) and validating the
integer matrices inside them. Every problem becomes one ``InputError`` naming the file, the field and the value.

Writes are atomic and byte-for-byte reproducible: ``.pt`` files are serialised in memory first (``torch.save`` to
a path names the archive after the temporary file), ``.npz`` members get a fixed timestamp.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from placer.core.errors import InputError, first_line
from placer.core.fileio import atomic_path, read_json, require_file, write_text_atomic  # noqa: F401 (read_json re-exported)


# -- JSON ----------------------------------------------------------------------------------------------------------
def _row(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


def dumps_rows(obj: Mapping[str, Any]) -> str:
    """JSON text of a flat object whose list values are written one element (one layer) per line."""
    parts = []
    for k, v in obj.items():
        if isinstance(v, list) and v and isinstance(v[0], list):
            body = ",\n".join("    " + _row(r) for r in v)
            parts.append(f"  {json.dumps(k)}: [\n{body}\n  ]")
        else:
            parts.append(f"  {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_json(path: Path, obj: Mapping[str, Any], rows: bool = True) -> None:
    write_text_atomic(path, dumps_rows(obj) if rows else json.dumps(obj, indent=2) + "\n")


# -- torch .pt -----------------------------------------------------------------------------------------------------
def write_torch(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """A ``.pt`` file holding a dict of tensors (what ``torch.load(weights_only=True)`` returns): int64, or
    float64 for arrays of real numbers."""
    # lazy: torch takes seconds to import
    import torch

    def tensor(v: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64 if v.dtype.kind == "f" else np.int64))

    buf = io.BytesIO()
    torch.save({k: tensor(np.asarray(v)) for k, v in arrays.items()}, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def read_torch(path: Path, what: str) -> dict[str, Any]:
    """The dict a ``.pt`` file holds, tensors as NumPy arrays (loaded with ``weights_only=True``: no code runs)."""
    # lazy: torch takes seconds to import
    import torch

    require_file(path, what)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        first = first_line(exc, None)
        raise InputError(f"{path}: not a readable torch file ({first[:160]})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors")
    return {str(k): (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}


# -- NumPy .npz ----------------------------------------------------------------------------------------------------
def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` as ``np.savez`` writes it, with fixed member timestamps so that it is reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr, dtype=np.int64), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def read_npz(path: Path, what: str) -> dict[str, Any]:
    require_file(path, what)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz file ({str(exc)[:160]})") from None


# -- validation ----------------------------------------------------------------------------------------------------
def check_keys(d: Mapping[str, Any], where: Path, fmt: str, required: Iterable[str], why_exact: str = "") -> None:
    """``d`` holds exactly the ``required`` keys."""
    required = list(required)
    missing = [k for k in required if k not in d]
    if missing:
        found = ", ".join(map(str, d)) or "nothing"
        raise InputError(f"{where}: field '{missing[0]}' missing; a {fmt} file holds {', '.join(required)} "
                         f"(found: {found})")
    extra = [k for k in d if k not in required]
    if extra:
        raise InputError(f"{where}: field '{extra[0]}' is not part of a {fmt} file (it holds exactly "
                         f"{', '.join(required)}){why_exact}")


def int_array(value: Any, where: Path, field: str, ndim: int, what: str) -> np.ndarray:
    """``value`` as an int64 array of ``ndim`` dimensions (``what`` names them, for example [layers, slots])."""
    try:
        arr = np.asarray(value)
    except ValueError:
        raise InputError(f"{where}: field '{field}' has rows of different lengths; expected a {what} matrix") from None
    if arr.dtype == object:
        raise InputError(f"{where}: field '{field}' has rows of different lengths; expected a {what} matrix")
    if arr.ndim != ndim or arr.size == 0:
        raise InputError(f"{where}: field '{field}' has shape {list(arr.shape)}; expected a non-empty {what} matrix")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            arr = arr.astype(np.int64)
        else:
            raise InputError(f"{where}: field '{field}' holds {arr.dtype} values; expected integer expert ids")
    return arr.astype(np.int64)


def check_nonnegative(arr: np.ndarray, where: Path, field: str) -> None:
    if (arr < 0).any():
        idx = tuple(int(v[0]) for v in np.nonzero(arr < 0))
        raise InputError(f"{where}: field '{field}{_index(idx)}' is {int(arr[idx])}; expert ids are >= 0")


def _index(idx: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in idx)


def check_inverse(p2l: np.ndarray, l2p: np.ndarray, cnt: np.ndarray, where: Path,
                  names: tuple[str, str, str]) -> None:
    """The inverse map ``l2p`` [X, E, R] and the counts ``cnt`` [X, E] agree with ``p2l`` [X, P].

    Each expert's valid entries (not -1) come first and are exactly the slots that hold it, in any order (vLLM and
    moeplace list them in increasing order, DeepSeek's EPLB in replica order).
    """
    n_p2l, n_l2p, n_cnt = names
    X, P = p2l.shape
    if l2p.shape[0] != X or cnt.shape[0] != X:
        raise InputError(f"{where}: '{n_p2l}' has {X} layers, '{n_l2p}' {l2p.shape[0]} and '{n_cnt}' {cnt.shape[0]}")
    E = cnt.shape[1]
    if l2p.shape[1] != E:
        raise InputError(f"{where}: '{n_l2p}' has {l2p.shape[1]} experts per layer, '{n_cnt}' {E}")
    if p2l.max() >= E:
        x, s = (int(v[0]) for v in np.nonzero(p2l >= E))
        raise InputError(f"{where}: field '{n_p2l}[{x}][{s}]' is {int(p2l[x, s])}, outside the {E} experts of '{n_cnt}'")
    for x in range(X):
        true_cnt = np.bincount(p2l[x], minlength=E)
        bad = np.nonzero(true_cnt != cnt[x])[0]
        if bad.size:
            e = int(bad[0])
            raise InputError(f"{where}: field '{n_cnt}[{x}][{e}]' is {int(cnt[x, e])} but '{n_p2l}[{x}]' holds "
                             f"expert {e} in {int(true_cnt[e])} slots")
        for e in range(E):
            row = l2p[x, e]
            valid = row[row != -1]
            if len(valid) != true_cnt[e] or (len(valid) and (row[: len(valid)] == -1).any()) \
                    or sorted(valid.tolist()) != np.nonzero(p2l[x] == e)[0].tolist():
                raise InputError(f"{where}: field '{n_l2p}[{x}][{e}]' is {row.tolist()} but '{n_p2l}[{x}]' holds "
                                 f"expert {e} in slots {np.nonzero(p2l[x] == e)[0].tolist()}")
