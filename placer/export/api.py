"""Export a placement to a serving stack's file, and import such a file back into a placement; export statistics
to the file of expert loads a stack balances itself (``export_loads``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from placer.core.errors import InputError
from placer.core.limits import MAX_LAYERS
from placer.export.layers import StackMaps, from_stack, loads_to_stack, to_stack
from placer.export.registry import FORMAT_NAMES, LOAD_FORMATS, NUMBERINGS, ExportFormat, get_format
from placer.core.placement import Placement

if TYPE_CHECKING:
    from placer.core.stats import RoutingStats


@dataclass(frozen=True)
class ExportResult:
    """What ``export_placement`` (or ``export_loads``) wrote: the file, its layer numbering and rows, and what loads
    it. Slots, GPUs and redundant copies are None for a file of expert loads."""

    path: Path
    format: str
    numbering: str
    layer_ids: tuple[int, ...]
    num_slots: int | None
    num_gpus: int | None
    num_redundant: int | None
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


def _target(fmt_name: str, path: str | os.PathLike, numbering: str | None, takes: str) -> tuple[ExportFormat, Path, str]:
    """The format (which must take ``takes``: "placement" or "loads"), the output path and the layer numbering."""
    fmt = resolve_format(fmt_name)
    if fmt.takes != takes:
        if takes == "placement":
            raise InputError(f"{fmt.name} files hold expert loads, not a placement: export statistics to it (a trace, "
                             f"a stats file or a load file)")
        raise InputError(f"{fmt.name} files hold a placement: solve one first (`moeplace solve`) and export it; the "
                         f"formats of expert loads are {', '.join(LOAD_FORMATS)}")
    path = Path(path)
    _check_suffix(fmt, path)
    return fmt, path, _numbering(fmt, numbering)


def _numbering_note(fmt: ExportFormat, numbering: str) -> list[str]:
    if numbering == fmt.stack_numbering:
        return []
    return [f"{fmt.name} counts {'every decoder layer' if fmt.stack_numbering == 'model' else 'MoE layers only'}; "
            f"this file uses {numbering} numbering as asked"]


def export_placement(p: Placement, path: str | os.PathLike, fmt_name: str, numbering: str | None = None, *,
                     num_model_layers: int | None = None, moe_layers: Sequence[int] | None = None,
                     mtp_layers: int = 0) -> ExportResult:
    """Write ``p`` as ``fmt_name`` to ``path`` (atomically); the ending of ``path`` picks the encoding.

    numbering: "moe" or "model" (None: the stack's own convention). num_model_layers: decoder layers in the model
    (``num_hidden_layers``) for row-per-layer formats under model numbering and for MTP layers (default: the last
    MoE layer + 1). moe_layers: the MoE layers' decoder-layer indices when the placement does not record them.
    mtp_layers: MTP layers (decoder index >= num_hidden_layers) whose keys the stack looks up (formats with
    ``add_mtp_layers``).
    """
    fmt, path, numbering = _target(fmt_name, path, numbering, "placement")
    maps = to_stack(p, numbering, keyed=fmt.keyed, num_model_layers=num_model_layers, model_layer_indices=moe_layers)
    notes = _numbering_note(fmt, numbering)
    if mtp_layers:
        takes_mtp = [n for n in FORMAT_NAMES if get_format(n).add_mtp_layers is not None]
        if fmt.add_mtp_layers is None:
            raise InputError(f"--mtp-layers applies to {', '.join(takes_mtp)}, not {fmt.name}")
        if numbering != "model":
            raise InputError("--mtp-layers needs --layer-numbering model: MTP layers are keyed by decoder index")
        hidden = int(num_model_layers) if num_model_layers is not None else max(maps.layer_ids_X) + 1
        if not 0 <= mtp_layers <= MAX_LAYERS - hidden:
            raise InputError(f"--mtp-layers ({mtp_layers}) must be between 0 and {MAX_LAYERS - hidden:,}: MTP layers "
                             f"take decoder indices from {hidden} on, and a model has at most {MAX_LAYERS:,}")
        maps, note = fmt.add_mtp_layers(maps, hidden, int(mtp_layers))
        notes.append(note)
    elif fmt.add_mtp_layers is not None and numbering == "model":
        notes.append(f"{fmt.name} also looks up the MTP layers a model runs (decoder index >= num_hidden_layers): "
                     f"add --mtp-layers N for them")
    fmt.write(maps, path)
    if numbering == "model" and not fmt.keyed and len(maps.layer_ids_X) > p.num_layers:
        notes.append(f"{len(maps.layer_ids_X) - p.num_layers} dense layers hold the trivial placement")
    return ExportResult(path, fmt.name, numbering, maps.layer_ids_X, p.num_slots, p.num_gpus, p.num_redundant,
                        fmt.loads_with(path, maps), notes)


def export_loads(stats: "RoutingStats", path: str | os.PathLike, fmt_name: str, numbering: str | None = None, *,
                 num_model_layers: int | None = None, moe_layers: Sequence[int] | None = None) -> ExportResult:
    """Write the expert loads of ``stats`` as ``fmt_name`` (a format in ``LOAD_FORMATS``) to ``path`` (atomically).

    numbering, num_model_layers, moe_layers: as in ``export_placement``; dense layers of a row-per-layer file hold
    zero load.
    """
    fmt, path, numbering = _target(fmt_name, path, numbering, "loads")
    loads = loads_to_stack(stats.load_LE, stats.moe_layer_indices, numbering, keyed=fmt.keyed,
                           num_model_layers=num_model_layers, model_layer_indices=moe_layers)
    fmt.write(loads, path)
    notes = _numbering_note(fmt, numbering)
    if numbering == "model" and not fmt.keyed and len(loads.layer_ids_X) > stats.num_layers:
        notes.append(f"{len(loads.layer_ids_X) - stats.num_layers} dense layers hold zero load")
    if loads.real_valued:
        notes.append("real-valued loads (rates or averages) written as they are")
    return ExportResult(path, fmt.name, numbering, loads.layer_ids_X, None, None, None, fmt.loads_with(path, loads),
                        notes)


def read_stack(path: str | os.PathLike, fmt_name: str) -> StackMaps:
    """A file's content in its own numbering (validated)."""
    fmt = resolve_format(fmt_name)
    if fmt.read is None:
        raise InputError(f"{fmt.name} files hold expert loads, not a placement; read them as statistics "
                         f"(`moeplace stats --load {Path(path).name}`)")
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
    maps = read_stack(path, fmt_name)
    numbering = _numbering(fmt, numbering)
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
