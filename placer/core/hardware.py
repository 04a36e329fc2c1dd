"""Hardware files: the expert FFN time curve and the all-to-all links of one kind of machine, with where each
figure came from (``moeplace calibrate`` measured it, or a preset names its published source).

A hardware file describes the machine, not a deployment: it holds no GPU or node count. ``--gpus`` and
``--nodes`` say those, and ``Hardware.topology(gpus, nodes)`` combines both into the ``Topology`` whose one
time model (``Topology.expert_time_us``, ``Topology.link_time_us``) the cost model, the objective's default
weights and replay's predictions use. The format (``docs/calibrate.md``), version 1::

    {"format": "moeplace-topology", "version": 1,
     "expert": {"hidden_size", "ffn_size", "dtype", "dtype_bytes", "floor_us", "intercept_us", "tflops",
                "source", "points": [[tokens, us], ...], "heldout_points": [...], "fit": {...}},
     "links": {"intra": {"bandwidth_gbs", "latency_us", "source", "points": [[bytes, us], ...], "fit": {...}},
               "inter": {...}},
     "metadata": {...}}

A file is refused (``InputError``, one line naming the file, the field and the value) if its format or version
is unknown, a curve is missing, a figure is out of range, a fitted curve no longer fits the points it was
fitted to (the file was edited after it was measured), or a file with fitted curves lacks their errors in
``metadata.fit_errors`` (or records others).

The fits are pure NumPy: ``fit_knee`` (expert time: flat floor, then a line) and ``fit_link`` (latency +
bytes / bandwidth), both least squares in relative error, since the points span orders of magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from placer.core.errors import InputError
from placer.core.fileio import read_json
from placer.core.topology import Topology

FORMAT = "moeplace-topology"
VERSION = 1
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# A fitted curve must reproduce the error recorded beside it to this much (relative error, absolute).
FIT_CHECK_TOLERANCE = 1e-3

# -- fits ----------------------------------------------------------------------------------------------


def rel_errors(pred: Sequence[float] | np.ndarray, meas: Sequence[float] | np.ndarray) -> np.ndarray:
    """|pred / meas - 1| per point."""
    pred, meas = np.asarray(pred, dtype=np.float64), np.asarray(meas, dtype=np.float64)
    return np.abs(pred / meas - 1.0)


def error_summary(pred: Sequence[float] | np.ndarray, meas: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """The relative errors of a curve on some points: largest, median, root mean square, and how many."""
    err = rel_errors(pred, meas)
    if err.size == 0:
        return {"points": 0}
    return {"points": int(err.size), "max_rel_error": round(float(err.max()), 6),
            "median_rel_error": round(float(np.median(err)), 6),
            "rms_rel_error": round(float(np.sqrt((err ** 2).mean())), 6)}


@dataclass(frozen=True)
class KneeFit:
    """The knee model of one expert's time: ``max(floor_us, intercept_us + us_per_token x tokens)``."""

    floor_us: float
    intercept_us: float
    us_per_token: float

    def predict(self, tokens: Sequence[float] | np.ndarray) -> np.ndarray:
        t = np.asarray(tokens, dtype=np.float64)
        return np.maximum(self.floor_us, self.intercept_us + self.us_per_token * t)

    @property
    def knee_tokens(self) -> float:
        return max(0.0, (self.floor_us - self.intercept_us) / self.us_per_token)

    def tflops(self, hidden: int, ffn: int) -> float:
        """Achieved TFLOP/s above the knee for a SwiGLU expert of that shape (6 x hidden x ffn FLOPs a token)."""
        return 6.0 * hidden * ffn / (self.us_per_token * 1e6)


def _line_rel(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """(a, b) minimising sum(((a + b x) / y - 1)^2); None if fewer than two distinct x."""
    if len(np.unique(x)) < 2:
        return None
    A = np.stack([1.0 / y, x / y], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, np.ones_like(y), rcond=None)
    return float(a), float(b)


def fit_knee(tokens: Sequence[float] | np.ndarray, us: Sequence[float] | np.ndarray) -> KneeFit:
    """Fit the knee model to measured (tokens, microseconds) points, in relative error.

    Every split of the points (sorted by tokens) into a flat head and a linear tail is tried: the floor is the
    head's best constant, the line the tail's best line (its slope must be positive); the split whose whole
    curve has the smallest root-mean-square relative error wins. A head of fewer than two points is still a
    floor (the launch-bound region may be one point wide); no head at all makes the floor the line's value at
    the fewest tokens measured (it never binds).
    """
    x, y = np.asarray(tokens, dtype=np.float64), np.asarray(us, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise ValueError(f"fit_knee needs at least 3 (tokens, us) points, got {x.size}")
    if (y <= 0).any() or (x <= 0).any():
        raise ValueError("fit_knee needs positive token counts and times")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    best: tuple[float, KneeFit] | None = None
    for i in range(0, x.size - 1):
        line = _line_rel(x[i:], y[i:])
        if line is None or line[1] <= 0:
            continue
        a, b = line
        floor = float((1.0 / y[:i]).sum() / (1.0 / y[:i] ** 2).sum()) if i else max(0.0, a + b * x[0])
        fit = KneeFit(floor, a, b)
        rms = float(np.sqrt((rel_errors(fit.predict(x), y) ** 2).mean()))
        if best is None or rms < best[0] - 1e-12:
            best = (rms, fit)
    if best is None:
        raise ValueError("fit_knee: the times do not grow with tokens (no line with a positive slope fits)")
    return best[1]


@dataclass(frozen=True)
class LinkFit:
    """One link class's all-to-all time: ``latency_us + bytes / (bandwidth_gbs x 1e3)`` microseconds."""

    latency_us: float
    bandwidth_gbs: float

    def predict(self, nbytes: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.latency_us + np.asarray(nbytes, dtype=np.float64) / (self.bandwidth_gbs * 1e3)


def fit_link(nbytes: Sequence[float] | np.ndarray, us: Sequence[float] | np.ndarray) -> LinkFit:
    """Fit latency and bandwidth to measured (bytes the busiest rank moves, microseconds) points, in relative
    error; a negative latency is refitted as zero (bandwidth alone)."""
    x, y = np.asarray(nbytes, dtype=np.float64), np.asarray(us, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"fit_link needs at least 2 (bytes, us) points, got {x.size}")
    if (y <= 0).any() or (x <= 0).any():
        raise ValueError("fit_link needs positive byte counts and times")
    line = _line_rel(x, y)
    if line is None or line[1] <= 0:
        raise ValueError("fit_link: the times do not grow with bytes")
    lat, slope = line
    if lat < 0:
        lat, slope = 0.0, float((x / y).sum() / ((x / y) ** 2).sum())
    return LinkFit(latency_us=lat, bandwidth_gbs=1.0 / (slope * 1e3))


# -- the file ------------------------------------------------------------------------------------------

# Topology field <- (section, key) of the file.
_FIELDS = {
    "hidden_size": ("expert", "hidden_size"), "expert_ffn_size": ("expert", "ffn_size"),
    "dtype_bytes": ("expert", "dtype_bytes"), "expert_floor_us": ("expert", "floor_us"),
    "expert_intercept_us": ("expert", "intercept_us"), "expert_tflops": ("expert", "tflops"),
    "intra_bw_gbs": ("links.intra", "bandwidth_gbs"), "intra_latency_us": ("links.intra", "latency_us"),
    "inter_bw_gbs": ("links.inter", "bandwidth_gbs"), "inter_latency_us": ("links.inter", "latency_us"),
}
_TOP = ("format", "version", "description", "expert", "links", "metadata")
_EXPERT = ("hidden_size", "ffn_size", "dtype", "dtype_bytes", "floor_us", "intercept_us", "tflops", "knee_tokens",
           "device", "clock", "threads", "source", "points", "heldout_points", "fit")
_LINK = ("bandwidth_gbs", "latency_us", "source", "backend", "world_size", "points", "fit")


@dataclass(frozen=True)
class Hardware:
    """A hardware file, read and checked. ``fields``: the ``Topology`` fields it sets (everything but the GPU
    and node counts); ``doc``: the whole file (curves, points, fits, metadata); ``where``: its path or preset."""

    fields: Mapping[str, float]
    doc: Mapping[str, Any] = field(repr=False)
    where: str

    def topology(self, gpus: int, nodes: int = 1) -> Topology:
        """The topology of ``gpus`` GPUs in ``nodes`` nodes of this hardware (InputError naming the values)."""
        try:
            return Topology(num_gpus=gpus, num_nodes=nodes, **self.fields)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{self.where}: {exc}") from None


def _fail(where: str, path: str, msg: str) -> InputError:
    return InputError(f"{where}: field '{path}' {msg}")


def _obj(d: Any, where: str, path: str, allowed: Sequence[str]) -> dict:
    if not isinstance(d, dict):
        if not path:
            raise InputError(f"{where}: expected a JSON object, got {type(d).__name__}")
        raise _fail(where, path, f"must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        name = f"{path}.{unknown[0]}" if path else unknown[0]
        raise _fail(where, name, f"is unknown; known fields: {', '.join(allowed)}")
    return d


def _num(d: dict, where: str, path: str, key: str, check: str) -> float:
    full = f"{path}.{key}"
    if key not in d:
        raise _fail(where, full, "is missing")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(where, full, f"is {v!r}, expected a finite number")
    if check == "int" and (not isinstance(v, int) or v < 1):
        raise _fail(where, full, f"is {v!r}, must be a positive integer")
    if check == "positive" and not v > 0:
        raise _fail(where, full, f"is {v!r}, must be positive")
    if check == "nonneg" and not v >= 0:
        raise _fail(where, full, f"is {v!r}, must be >= 0")
    return v


def _points(d: dict, where: str, path: str, key: str) -> np.ndarray | None:
    if key not in d:
        return None
    pts = d[key]
    try:
        arr = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros((0, 0))
    if arr.ndim != 2 or arr.shape[1:] != (2,) or not np.isfinite(arr).all() or (arr <= 0).any():
        raise _fail(where, f"{path}.{key}", "must be a list of [x, y] pairs of positive numbers")
    return arr


def _check_fit(d: dict, where: str, path: str, predict, value_key: str) -> None:
    """A section with points and a recorded fit: its curve must still give the recorded error on them."""
    pts = _points(d, where, path, "points")
    _points(d, where, path, "heldout_points")
    if pts is None or len(pts) == 0:
        if str(d.get("source", "")).startswith("measured"):
            raise _fail(where, f"{path}.points", "is missing: a measured curve keeps its points")
        return
    fit = d.get("fit")
    if not isinstance(fit, dict) or not isinstance(fit.get("max_rel_error"), (int, float)):
        raise _fail(where, f"{path}.fit", "is missing or has no max_rel_error")
    got = float(rel_errors(predict(pts[:, 0]), pts[:, 1]).max())
    if abs(got - float(fit["max_rel_error"])) > FIT_CHECK_TOLERANCE:
        raise _fail(where, f"{path}.{value_key}", f"no longer fits the file's points (largest error {got:.4f}, the "
                    f"file records {fit['max_rel_error']:.4f}): edited after it was measured?")


def _check_fit_errors(meta: dict, sections: dict[str, dict], where: str) -> None:
    """A file with curves fitted to points (calibrate's) records each one's error in ``metadata.fit_errors``, and
    the record agrees with the curve's own ``fit``."""
    fitted = [path for path, sec in sections.items() if sec.get("points")]
    if not fitted:
        return
    rec = meta.get("fit_errors")
    if not isinstance(rec, dict):
        raise _fail(where, "metadata.fit_errors", "is missing: a file with measured curves records every fit's "
                    "error" if rec is None else f"must be a JSON object, got {type(rec).__name__}")
    for path in fitted:
        got, want = rec.get(path), sections[path]["fit"]["max_rel_error"]
        if not isinstance(got, dict) or isinstance(got.get("max_rel_error"), bool) or \
                not isinstance(got.get("max_rel_error"), (int, float)):
            raise _fail(where, f"metadata.fit_errors.{path}", f"is {got!r}: the measured curve's error is missing")
        if abs(float(got["max_rel_error"]) - float(want)) > FIT_CHECK_TOLERANCE:
            raise _fail(where, f"metadata.fit_errors.{path}.max_rel_error", f"is {got['max_rel_error']!r}, the "
                        f"curve's fit records {want!r}: edited after it was measured?")


def read_hardware(doc: Any, where: str) -> Hardware:
    """Check a hardware document (the parsed JSON of a hardware file) and return it as ``Hardware``."""
    d = _obj(doc, where, "", _TOP)
    if d.get("format") != FORMAT:
        raise _fail(where, "format", f"is {d.get('format')!r}, expected {FORMAT!r}")
    if d.get("version") != VERSION:
        raise _fail(where, "version", f"is {d.get('version')!r}: this moeplace reads version {VERSION} of "
                    f"{FORMAT} files")
    for section in ("expert", "links", "metadata"):
        if section not in d:
            what = {"expert": "the expert FFN time curve", "links": "the link curves",
                    "metadata": "the file's metadata"}[section]
            raise _fail(where, section, f"is missing ({what})")
    expert = _obj(d["expert"], where, "expert", _EXPERT)
    links = _obj(d["links"], where, "links", ("intra", "inter"))
    if not isinstance(d["metadata"], dict):
        raise _fail(where, "metadata", f"must be a JSON object, got {type(d['metadata']).__name__}")
    sections = {"expert": expert}
    for cls in ("intra", "inter"):
        if cls not in links:
            raise _fail(where, f"links.{cls}", f"is missing (the {'NVLink' if cls == 'intra' else 'network'} curve)")
        sections[f"links.{cls}"] = _obj(links[cls], where, f"links.{cls}", _LINK)
    for path, sec in sections.items():
        if not isinstance(sec.get("source"), str) or not sec["source"]:
            raise _fail(where, f"{path}.source", "is missing: every curve says where it came from")
    kinds = {"hidden_size": "int", "ffn_size": "int", "dtype_bytes": "int", "floor_us": "nonneg",
             "intercept_us": "any", "tflops": "positive", "bandwidth_gbs": "positive", "latency_us": "nonneg"}
    fields = {name: _num(sections[sec], where, sec, key, kinds[key]) for name, (sec, key) in _FIELDS.items()}
    fit = KneeFit(fields["expert_floor_us"], fields["expert_intercept_us"],
                  6.0 * fields["hidden_size"] * fields["expert_ffn_size"] / (fields["expert_tflops"] * 1e6))
    _check_fit(expert, where, "expert", fit.predict, "floor_us")
    for cls in ("intra", "inter"):
        lf = LinkFit(fields[f"{cls}_latency_us"], fields[f"{cls}_bw_gbs"])
        _check_fit(sections[f"links.{cls}"], where, f"links.{cls}", lf.predict, "bandwidth_gbs")
    _check_fit_errors(d["metadata"], sections, where)
    hw = Hardware(fields=fields, doc=d, where=where)
    hw.topology(1)  # every value in range
    return hw


def load_hardware(path: str | Path) -> Hardware:
    return read_hardware(read_json(path, "topology file"), str(path))


def is_hardware_doc(doc: Any) -> bool:
    """A versioned hardware file (as opposed to a flat ``Topology`` dict with ``num_gpus``)."""
    return isinstance(doc, dict) and "format" in doc


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> Hardware:
    """A preset shipped with moeplace (``placer/core/presets/NAME.json``; each figure names its source)."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise InputError(f"topology preset {name!r} does not exist; presets: {', '.join(preset_names())}")
    hw = load_hardware(path)
    return Hardware(fields=hw.fields, doc=hw.doc, where=f"preset {name}")


def load_topology_source(path: str | Path) -> "Hardware | Topology":
    """What a ``--topology`` argument names: a hardware file or a preset's name (``Hardware``, to be combined
    with a GPU and node count), or a flat topology file (``Topology.to_dict``: its own ``num_gpus`` and
    ``num_nodes``). InputError naming the file otherwise."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and str(p) in preset_names():
        return load_preset(str(p))
    if not p.exists():
        raise InputError(f"{p}: topology file not found (nor a preset name: {', '.join(preset_names())})")
    doc = read_json(p, "topology file")
    if is_hardware_doc(doc):
        return read_hardware(doc, str(p))
    return Topology.from_dict(doc, where=str(p))


def expert_section(hidden: int, ffn: int, dtype: str, dtype_bytes: int, fit: KneeFit, source: str,
                   points: np.ndarray | None = None, heldout: np.ndarray | None = None,
                   device: str | None = None, **extra: Any) -> dict[str, Any]:
    """The ``expert`` section of a hardware file for a fitted curve, with its errors on the points (computed
    from the figures as written: rounded to 4 decimals). ``extra``: how it was measured (``clock``, ``threads``)."""
    floor, intercept, tflops = (round(float(v), 4) for v in (fit.floor_us, fit.intercept_us, fit.tflops(hidden, ffn)))
    fit = KneeFit(floor, intercept, 6.0 * hidden * ffn / (tflops * 1e6))
    sec: dict[str, Any] = {
        "hidden_size": int(hidden), "ffn_size": int(ffn), "dtype": dtype, "dtype_bytes": int(dtype_bytes),
        "floor_us": floor, "intercept_us": intercept, "tflops": tflops, "knee_tokens": round(fit.knee_tokens, 3),
        "device": device, **extra, "source": source,
    }
    if points is not None:
        pts = _rounded(points)
        sec["points"] = pts.tolist()
        sec["fit"] = {"model": "max(floor_us, intercept_us + tokens x 6 x hidden x ffn / (tflops x 1e6))",
                      **error_summary(fit.predict(pts[:, 0]), pts[:, 1])}
        if heldout is not None and len(heldout):
            held = _rounded(heldout)
            sec["heldout_points"] = held.tolist()
            sec["fit"]["heldout"] = error_summary(fit.predict(held[:, 0]), held[:, 1])
    return sec


def _rounded(points: np.ndarray) -> np.ndarray:
    """[n, 2] points as written to a file (the y values to 4 decimals), so that a recorded error is of them."""
    pts = np.array(points, dtype=np.float64)
    pts[:, 1] = np.round(pts[:, 1], 4)
    return pts


def link_section(fit: LinkFit, source: str, points: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
    """The ``links.intra`` / ``links.inter`` section of a hardware file."""
    fit = LinkFit(round(float(fit.latency_us), 4), round(float(fit.bandwidth_gbs), 4))
    sec: dict[str, Any] = {"bandwidth_gbs": fit.bandwidth_gbs, "latency_us": fit.latency_us, "source": source, **extra}
    if points is not None:
        pts = _rounded(points)
        sec["points"] = pts.tolist()
        sec["fit"] = {"model": "latency_us + bytes / (bandwidth_gbs x 1e3)",
                      **error_summary(fit.predict(pts[:, 0]), pts[:, 1])}
    return sec


def fit_errors(expert: dict, intra: dict, inter: dict) -> dict[str, Any]:
    """``metadata.fit_errors``: the largest and median relative error of every curve fitted to points (the
    expert's also on its held-out points), "not measured" for the others."""
    keys = ("max_rel_error", "median_rel_error")
    out: dict[str, Any] = {}
    for name, sec in (("expert", expert), ("links.intra", intra), ("links.inter", inter)):
        fit = sec.get("fit") if sec.get("points") else None
        out[name] = {k: fit.get(k) for k in keys} if isinstance(fit, dict) else "not measured"
        if name == "expert" and isinstance(fit, dict):
            out["expert_heldout"] = {k: fit.get("heldout", {}).get(k) for k in keys}
    return out


def hardware_doc(expert: dict, intra: dict, inter: dict, metadata: dict, description: str | None = None) -> dict:
    """A version-1 hardware document from its sections; ``metadata.fit_errors`` is added when a curve was fitted
    to points."""
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if description:
        doc["description"] = description
    errors = fit_errors(expert, intra, inter)
    if any(isinstance(v, dict) for v in errors.values()):
        metadata = {**metadata, "fit_errors": errors}
    doc.update(expert=expert, links={"intra": intra, "inter": inter}, metadata=metadata)
    return doc
