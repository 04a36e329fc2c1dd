"""The project's own placement JSON (``placer/core/placement_io.py``, schema ``placer/core/schemas/placement.v1.json``): the
only format that keeps the solver, status, objective, bound, gap, topology and model layer indices."""

from __future__ import annotations

from pathlib import Path

from placer.export.layers import StackMaps
from placer.export.registry import ExportFormat, register
from placer.core.placement_io import load_placement, save_placement


def write(maps: StackMaps, path: Path) -> None:
    assert maps.placement is not None, "the moeplace format writes the full placement"
    save_placement(maps.placement, path)


def read(path: Path) -> StackMaps:
    p = load_placement(path)
    return StackMaps(p.phy2log_LP.copy(), tuple(range(p.num_layers)), p.num_gpus, p.num_experts, placement=p)


def loads_with(path: Path, maps: StackMaps) -> str:
    return f"the moeplace commands that take a placement (export, apply, ...): {path}"


FORMAT = register(ExportFormat(
    name="moeplace", suffixes=(".json",), stack_numbering="moe", keyed=False,
    write=write, read=read, loads_with=loads_with,
    description="moeplace placement JSON (the full Placement)",
))
