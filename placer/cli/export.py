"""``moeplace export``: write a placement in the file a serving stack loads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from placer.export.names import FORMAT_NAMES

_FORMATS = ", ".join(FORMAT_NAMES)


def export(
    placement: Path = typer.Argument(..., help="Placement file (moeplace JSON, from `moeplace solve`)."),
    fmt: str = typer.Option(..., "--format", "-f", help=f"Target format: {_FORMATS}."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file; its ending picks the encoding "
                             "(sglang .json/.pt, vllm .json/.pt, vllm-ascend .json, eplb .pt/.npz, trtllm .yaml, "
                             "moeplace .json)."),
    layer_numbering: Optional[str] = typer.Option(
        None, "--layer-numbering", help="moe: one row per MoE layer; model: count every decoder layer (dense layers "
        "get the trivial placement where the format needs every layer) \\[default: the stack's own convention: model "
        "for sglang and trtllm, moe for the others]."),
    num_model_layers: Optional[int] = typer.Option(
        None, "--num-model-layers", help="Decoder layers of the model, for --layer-numbering model "
        "\\[default: the last MoE layer + 1]."),
    moe_layers: Optional[str] = typer.Option(
        None, "--moe-layers", help="Decoder-layer indices of the MoE layers (e.g. 3-60) when the placement does "
        "not record them."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
) -> None:
    """Export a placement to SGLang, vLLM, vLLM-Ascend, DeepSeek EPLB, TensorRT-LLM or moeplace format.

    Prints where the file is and the serving-stack command line that loads it.

    docs/export.md says what each format was checked against.
    """
    from placer.cli.common import console, kv_table, print_json
    from placer.cli.common import UsageError
    from placer.export import export_placement
    from placer.export.layers import layer_ranges, parse_layer_list
    from placer.core.placement_io import load_placement

    if num_model_layers is not None and num_model_layers < 1:
        raise UsageError(f"--num-model-layers must be positive, got {num_model_layers}")
    p = load_placement(placement)
    layers = parse_layer_list(moe_layers) if moe_layers is not None else None
    r = export_placement(p, out, fmt, layer_numbering, num_model_layers=num_model_layers, moe_layers=layers)
    if as_json:
        print_json({"file": str(r.path), "format": r.format, "layer_numbering": r.numbering,
                    "layers": list(r.layer_ids), "slots_per_layer": r.num_slots, "gpus": r.num_gpus,
                    "redundant": r.num_redundant, "loads_with": r.loads_with, "notes": r.notes})
        return
    what = "MoE layers" if r.numbering == "moe" else "decoder layers"
    rows = [
        ("format", r.format),
        ("layers", f"{len(r.layer_ids)} rows, {r.numbering} numbering ({what} {layer_ranges(r.layer_ids)})"),
        ("slots", f"{r.num_slots} per layer, {r.num_slots // r.num_gpus} on each of {r.num_gpus} GPUs "
                  f"({r.num_redundant} redundant)"),
    ] + [("note", n) for n in r.notes]
    console().print(kv_table(f"wrote {r.path}", rows))
    print(f"load it with: {r.loads_with}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
