"""Reading and writing placements as versioned JSON, validated against ``schemas/placement.v1.json``."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from placer.core.errors import InputError
from placer.core.fileio import write_text_atomic
from placer.core.objective import Objective
from placer.core.placement import Placement, SolveReport
from placer.core.topology import Topology

FORMAT = "moeplace-placement"
SCHEMA_VERSION = 1


@lru_cache(maxsize=1)
def placement_schema() -> dict[str, Any]:
    """The JSON Schema a placement file is validated against (shipped with the package)."""
    text = resources.files("placer.core").joinpath("schemas/placement.v1.json").read_text(encoding="utf-8")
    return json.loads(text)


def _num(x: float | None) -> float | None:
    return None if x is None else float(x)


def placement_to_dict(p: Placement) -> dict[str, Any]:
    """The JSON object of a placement and its report (keys in a fixed order)."""
    r = p.report
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "num_layers": p.num_layers,
        "num_experts": p.num_experts,
        "num_slots": p.num_slots,
        "num_redundant": p.num_redundant,
        "num_gpus": p.num_gpus,
        "num_nodes": p.num_nodes,
        "slots_per_gpu": p.slots_per_gpu,
        "mode": r.mode.value,
        "solver": r.solver,
        "status": r.status.value,
        "objective": _num(r.objective_value),
        "objective_name": None if r.objective is None else r.objective.name,
        "objective_definition": None if r.objective is None else r.objective.to_dict(),
        "bound": _num(r.bound),
        "gap": _num(r.gap),
        "wall_time_s": round(float(r.wall_time_s), 6),
        "source": r.source,
        "replica_split": "even",
        "model_layer_indices": list(p.model_layer_indices) if p.model_layer_indices is not None else None,
        "topology": p.topology.to_dict() if p.topology is not None else None,
        "extra": r.extra,
        "phy2log": p.phy2log_LP.tolist(),
    }


def placement_to_json(p: Placement) -> str:
    """JSON text with one line per layer of ``phy2log`` (readable and diff-able)."""
    d = placement_to_dict(p)
    rows = d.pop("phy2log")
    head = json.dumps(d, indent=2)
    body = ",\n".join("    " + json.dumps(r, separators=(",", ":")) for r in rows)
    return head[:-2] + ',\n  "phy2log": [\n' + body + "\n  ]\n}\n"


def save_placement(p: Placement, path: str | os.PathLike) -> Path:
    """Write a placement atomically."""
    return write_text_atomic(path, placement_to_json(p))


def _json_path(error) -> str:
    parts = []
    for x in error.absolute_path:
        parts.append(f"[{x}]" if isinstance(x, int) else (f".{x}" if parts else str(x)))
    return "".join(parts) or "(top level)"


def placement_from_dict(d: Any, where: str = "placement") -> Placement:
    """Validate a placement object (schema, then meaning) and build the ``Placement`` with its report.

    The objective is read from ``objective_definition``; ``objective_name`` is only its rendering for people (a file
    written before the terms were recorded reports no objective)."""
    validator = jsonschema.Draft202012Validator(placement_schema())
    errors = sorted(validator.iter_errors(d), key=lambda e: (len(list(e.absolute_path)), list(map(str, e.absolute_path))))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise InputError(f"{where}: field '{_json_path(err)}': {err.message}")
    rows = d["phy2log"]
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        l = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
        raise InputError(f"{where}: field 'phy2log[{l}]' has {len(rows[l])} slots, layer 0 has {len(rows[0])}")
    for key, value in (("num_layers", len(rows)), ("num_slots", len(rows[0]))):
        if key in d and d[key] != value:
            raise InputError(f"{where}: field '{key}' is {d[key]} but phy2log has {value}")
    topo = Topology.from_dict(d["topology"], where=f"{where}: field 'topology'") if d.get("topology") else None
    try:
        definition = d.get("objective_definition")
        objective = None if definition is None else Objective.from_dict(definition)
    except ValueError as exc:
        raise InputError(f"{where}: field 'objective_definition': {exc}") from None
    try:
        report = SolveReport(solver=d["solver"], status=d["status"], mode=d["mode"], objective=objective,
                             objective_value=d["objective"], bound=d["bound"], gap=d["gap"],
                             wall_time_s=d["wall_time_s"], source=d["source"], extra=d.get("extra", {}))
        p = Placement(phy2log_LP=rows, num_gpus=d["num_gpus"], num_experts=d["num_experts"], num_nodes=d["num_nodes"],
                      model_layer_indices=d.get("model_layer_indices"), topology=topo, report=report)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    for key, value in (("slots_per_gpu", p.slots_per_gpu), ("num_redundant", p.num_redundant)):
        if key in d and d[key] != value:
            raise InputError(f"{where}: field '{key}' is {d[key]} but phy2log and num_gpus give {value}")
    return p


def load_placement(path: str | os.PathLike) -> Placement:
    """Read and validate a placement file; every problem is one InputError naming file, field and value."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: placement file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a placement JSON file")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a text file; expected placement JSON") from None
    except ValueError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    return placement_from_dict(d, where=str(p))
