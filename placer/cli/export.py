"""``moeplace export``: write a placement in the file a serving stack loads, or statistics in the file of expert
loads a stack balances itself (``sglang-eplb``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from placer.cli.common import UsageError, console, kv_table, print_json
from placer.core.limits import MAX_LAYERS
from placer.export.layers import check_model_layers, layer_ranges, parse_layer_list
from placer.export.names import FORMAT_NAMES, LOAD_FORMATS

_FORMATS = ", ".join(FORMAT_NAMES)


def export(
    source: Path = typer.Argument(
        ..., metavar="INPUT", help="Placement file (moeplace JSON, from `moeplace solve`). For "
        f"{', '.join(LOAD_FORMATS)}: statistics instead: a trace (.parquet or a folder), a stats file (.npz) or a "
        "load file (.npy, .csv, .pt, .json; see `moeplace stats --load`)."),
    fmt: str = typer.Option(..., "--format", "-f", help=f"Target format: {_FORMATS}."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file; its ending picks the encoding "
                             "(sglang .json/.pt, sglang-eplb .json/.pt, vllm .json/.pt, vllm-ascend .json, "
                             "eplb .pt/.npz, trtllm .yaml, moeplace .json)."),
    layer_numbering: Optional[str] = typer.Option(
        None, "--layer-numbering", help="moe: one row per MoE layer; model: count every decoder layer (dense layers "
        "get the trivial placement, or zero load, where the format needs every layer) \\[default: the stack's own "
        "convention: model for sglang, sglang-eplb and trtllm, moe for the others]."),
    num_model_layers: Optional[int] = typer.Option(
        None, "--num-model-layers", help="Decoder layers of the model (num_hidden_layers), for --layer-numbering "
        "model and --mtp-layers \\[default: the last MoE layer + 1]."),
    moe_layers: Optional[str] = typer.Option(
        None, "--moe-layers", help="Decoder-layer indices of the MoE layers (e.g. 3-60) when the input does "
        "not record them."),
    mtp_layers: int = typer.Option(
        0, "--mtp-layers", help="trtllm: MTP layers the model runs (DeepSeek-V3/R1 with MTP speculative decoding). "
        "TensorRT-LLM looks up their keys (decoder index num_hidden_layers, ...) and stops without them; they get "
        "its default layout."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
) -> None:
    """Export a placement to SGLang, vLLM, vLLM-Ascend, DeepSeek EPLB, TensorRT-LLM or moeplace format, or
    statistics to SGLang's own EPLB (sglang-eplb: the logical_count file of --init-expert-location).

    Prints where the file is and the serving-stack command line that loads it.

    docs/export.md says what each format was checked against.
    """
    # lazy: loads jsonschema; kept out of `moeplace --help`
    from placer.export import export_loads, export_placement
    from placer.export.api import resolve_format

    if num_model_layers is not None:
        check_model_layers(num_model_layers)
    if not 0 <= mtp_layers <= MAX_LAYERS:
        raise UsageError(f"--mtp-layers ({mtp_layers}) must be between 0 and {MAX_LAYERS:,}")
    layers = parse_layer_list(moe_layers) if moe_layers is not None else None
    if resolve_format(fmt).takes == "loads":
        if mtp_layers:
            raise UsageError(f"--mtp-layers applies to placements (trtllm), not to {fmt}")
        stats = _statistics(source)
        r = export_loads(stats, out, fmt, layer_numbering, num_model_layers=num_model_layers, moe_layers=layers)
    else:
        from placer.core.placement_io import load_placement

        if source.is_dir() or source.suffix.lower() in (".parquet", ".pq", ".npz", ".npy", ".csv"):
            raise UsageError(f"{source}: statistics, not a placement: solve one first (`moeplace solve ... --out "
                             f"placement.json`), or export the loads for SGLang's own EPLB (--format "
                             f"{' / '.join(LOAD_FORMATS)})")
        p = load_placement(source)
        r = export_placement(p, out, fmt, layer_numbering, num_model_layers=num_model_layers, moe_layers=layers,
                             mtp_layers=mtp_layers)
    if as_json:
        print_json({"file": str(r.path), "format": r.format, "layer_numbering": r.numbering,
                    "layers": list(r.layer_ids), "slots_per_layer": r.num_slots, "gpus": r.num_gpus,
                    "redundant": r.num_redundant, "loads_with": r.loads_with, "notes": r.notes})
        return
    what = "MoE layers" if r.numbering == "moe" else "decoder layers"
    rows = [
        ("format", r.format),
        ("layers", f"{len(r.layer_ids)} rows, {r.numbering} numbering ({what} {layer_ranges(r.layer_ids)})"),
    ]
    if r.num_slots is not None:
        rows.append(("slots", f"{r.num_slots} per layer, {r.num_slots // r.num_gpus} on each of {r.num_gpus} GPUs "
                              f"({r.num_redundant} redundant)"))
    rows += [("note", n) for n in r.notes]
    console().print(kv_table(f"wrote {r.path}", rows))
    print(f"load it with: {r.loads_with}")


def _statistics(source: Path):
    """The statistics an export of expert loads reads: a trace (file or folder), a stats file or a load file."""
    # lazy: loads the solvers (numba, OR-Tools); kept out of `moeplace --help`
    from placer.inputs import read_statistics

    if source.is_dir() or source.suffix.lower() in (".parquet", ".pq"):
        return read_statistics(traces=[source])
    if source.suffix.lower() == ".npz":
        return read_statistics(stats_file=source)
    return read_statistics(load_file=source)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
