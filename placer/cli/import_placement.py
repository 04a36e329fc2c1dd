"""``moeplace import-placement``: read a serving stack's placement file back into a moeplace placement."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from placer.cli.common import UsageError, console, kv_table
from placer.export.layers import layer_ranges, parse_layer_list
from placer.export.names import FORMAT_NAMES


def import_placement(
    file: Path = typer.Argument(..., help="A file `moeplace export` writes (or the stack itself wrote)."),
    fmt: str = typer.Option(..., "--format", "-f", help=f"Its format: {', '.join(FORMAT_NAMES)}."),
    out: Path = typer.Option(..., "--out", "-o", help="Output placement (.json)."),
    layer_numbering: Optional[str] = typer.Option(
        None, "--layer-numbering", help="How the file counts layers: moe or model \\[default: the stack's own "
        "convention: model for sglang and trtllm, moe for the others]."),
    moe_layers: Optional[str] = typer.Option(
        None, "--moe-layers", help="Decoder-layer indices of the MoE layers (e.g. 3-60). With model numbering it "
        "picks the MoE rows (needed for row-per-layer files; 'nontrivial' takes the rows that differ from the "
        "trivial placement); with moe numbering it is recorded as the placement's model layer indices."),
    gpus: Optional[int] = typer.Option(None, "--gpus", "-G", help="EP size (GPUs), for formats that do not record "
                                       "it (all but vllm-ascend and moeplace)."),
    nodes: Optional[int] = typer.Option(None, "--nodes", "-N", help="Nodes the GPUs sit in \\[default: 1]."),
    experts: Optional[int] = typer.Option(None, "--experts", "-E", help="Experts per layer, for formats that do "
                                          "not record it (sglang, trtllm, vllm-ascend) \\[default: largest id + 1]."),
) -> None:
    """Import a placement from SGLang, vLLM, vLLM-Ascend, DeepSeek EPLB, TensorRT-LLM or moeplace format.

    The file is checked (shape, every expert placed, inverse maps, slots per GPU); a problem is one line.
    """
    # lazy: loads jsonschema; kept out of `moeplace --help`
    from placer.export import import_placement as do_import
    from placer.core.placement_io import save_placement

    for name, v in (("--gpus", gpus), ("--nodes", nodes), ("--experts", experts)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be positive, got {v}")
    layers = None if moe_layers is None else ("nontrivial" if moe_layers == "nontrivial" else parse_layer_list(moe_layers))
    p = do_import(file, fmt, layer_numbering, moe_layers=layers, gpus=gpus, nodes=nodes, experts=experts)
    save_placement(p, out)
    idx = p.model_layer_indices
    console().print(kv_table(f"wrote {out}", [
        ("from", f"{file} ({fmt})"),
        ("shape", f"{p.num_layers} MoE layers x {p.num_slots} slots, {p.num_experts} experts "
                  f"({p.num_redundant} redundant), {p.num_gpus} GPUs in {p.num_nodes} node(s)"),
        ("model layers", layer_ranges(idx) if idx else "not recorded (pass --moe-layers to record them)"),
    ]))


def register(app: typer.Typer) -> None:
    app.command("import-placement")(import_placement)
