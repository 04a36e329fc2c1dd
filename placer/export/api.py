"""Export a placement to a serving stack's file, and import such a file back into a placement."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from placer.core.errors import InputError
from placer.export.layers import StackMaps, from_stack, to_stack
from placer.export.registry import FORMAT_NAMES, NUMBERINGS, ExportFormat, get_format
from placer.core.placement import Placement


@dataclass(frozen=True)
class ExportResult:
    """What ``export_placement`` wrote: the file, its layer numbering and rows, and what loads it."""

    path: Path
    format: str
    numbering: str
    layer_ids: tuple[int, ...]
    num_slots: int
    num_gpus: int
    num_redundant: int
    loads_with: str
    notes: list[str] = field(default_factory=list)


def resolve_format(name: str) -> ExportFormat:
    try:
        return get_format(name)
    except ValueError:
        raise InputError(f"--format: unknown format {name!r}; choose from {', '.join(FORMAT_NAMES)}") from None


def _check_suffix(fmt: ExportFormat, path: Path) -> None:
    if path.suffix.lower() not in fmt.suffixes:
        raise InputError(f"{path}: a {fmt.name} file is written as {' or '.join(fmt.suffixes)}, "
                         f"not {path.suffix or 'a name without ending'!r}")


def _numbering(fmt: ExportFormat, numbering: str | None) -> str:
    numbering = numbering or fmt.stack_numbering
    if numbering not in NUMBERINGS:
        raise InputError(f"--layer-numbering: {numbering!r} is not one of {', '.join(NUMBERINGS)}")
    if fmt.name == "moeplace" and numbering != "moe":
        raise InputError("--layer-numbering model does not apply to the moeplace format: it stores MoE layers with "
                         "their model layer indices")
    return numbering


def export_placement(p: Placement, path: str | os.PathLike, fmt_name: str, numbering: str | None = None, *,
                     num_model_layers: int | None = None, moe_layers: Sequence[int] | None = None) -> ExportResult:
    """Write ``p`` as ``fmt_name`` to ``path`` (atomically); the ending of ``path`` picks the encoding.

    numbering: "moe" or "model" (None: the stack's own convention). num_model_layers: decoder layers in the model
    for row-per-layer formats under model numbering (default: the last MoE layer + 1). moe_layers: the MoE layers'
    decoder-layer indices when the placement does not record them.
    """
    fmt = resolve_format(fmt_name)
    path = Path(path)
    _check_suffix(fmt, path)
    numbering = _numbering(fmt, numbering)
    maps = to_stack(p, numbering, keyed=fmt.keyed, num_model_layers=num_model_layers, model_layer_indices=moe_layers)
    fmt.write(maps, path)
    notes = []
    if numbering != fmt.stack_numbering:
        notes.append(f"{fmt.name} counts {'every decoder layer' if fmt.stack_numbering == 'model' else 'MoE layers only'}; "
                     f"this file uses {numbering} numbering as asked")
    if numbering == "model" and not fmt.keyed and len(maps.layer_ids_X) > p.num_layers:
        notes.append(f"{len(maps.layer_ids_X) - p.num_layers} dense layers hold the trivial placement")
    return ExportResult(path, fmt.name, numbering, maps.layer_ids_X, p.num_slots, p.num_gpus, p.num_redundant,
                        fmt.loads_with(path, maps), notes)


def read_stack(path: str | os.PathLike, fmt_name: str) -> StackMaps:
    """A file's content in its own numbering (validated)."""
    fmt = resolve_format(fmt_name)
    path = Path(path)
    _check_suffix(fmt, path)
    return fmt.read(path)


def import_placement(path: str | os.PathLike, fmt_name: str, numbering: str | None = None, *,
                     moe_layers: Sequence[int] | str | None = None, gpus: int | None = None, nodes: int | None = None,
                     experts: int | None = None) -> Placement:
    """Read a serving stack's file back into a placement.

    numbering: how the file counts layers (None: the stack's own convention). moe_layers: with "model", the MoE
    layers' decoder-layer indices (or "nontrivial"); with "moe", the model layer indices to record. gpus / nodes /
    experts: what the file does not record.
    """
    fmt = resolve_format(fmt_name)
    path = Path(path)
    numbering = _numbering(fmt, numbering)
    maps = read_stack(path, fmt_name)
    if maps.placement is not None:  # the moeplace format: the placement itself, checked against the options
        p = maps.placement
        for name, given, known in (("gpus", gpus, p.num_gpus), ("experts", experts, p.num_experts),
                                   ("nodes", nodes, p.num_nodes)):
            if given is not None and int(given) != known:
                raise InputError(f"{path}: the placement has {known} {name}, --{name} says {given}")
        if moe_layers is not None:
            if isinstance(moe_layers, str) or len(moe_layers) != p.num_layers:
                raise InputError(f"{path}: --moe-layers must list the placement's {p.num_layers} MoE layers")
            p = p.with_(model_layer_indices=tuple(moe_layers))
        return p
    return from_stack(maps, str(path), fmt.name, numbering, moe_layers=moe_layers, gpus=gpus, nodes=nodes,
                      experts=experts, keyed=fmt.keyed)
