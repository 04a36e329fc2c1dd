"""``moeplace apply``: renumber a checkpoint's experts so that its contiguous layout is a placement."""

from __future__ import annotations

from pathlib import Path

import typer

from placer.apply import PROVENANCE, apply_placement
from placer.cli.common import console, kv_table
from placer.export.layers import layer_ranges


def apply(
    placement: Path = typer.Argument(..., help="Placement without redundant copies (moeplace JSON)."),
    model: Path = typer.Option(..., "--model", "-m", help="Hugging Face checkpoint folder (safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="New checkpoint folder (must not exist unless --force)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists (only once the new one is complete)."),
) -> None:
    """Renumber the experts of a checkpoint so that its contiguous layout is the placement.

    For stacks that place experts contiguously (vLLM's default linear layout, Megatron, DeepSpeed): GPU g of G
    holds the new experts g*E/G .. (g+1)*E/G-1, and new expert e of MoE layer l is old expert phy2log[l][e].
    Expert weights, router rows and per-expert biases move together; the model computes the same outputs.

    Supported families: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3 (group-preserving placements only
    under group-limited routing), GPT-OSS. The input checkpoint is never modified.
    """
    # lazy: loads jsonschema; kept out of `moeplace --help`
    from placer.core.placement_io import load_placement

    p = load_placement(placement)
    r = apply_placement(p, model, out, force=force, placement_source=str(placement))
    rows = [
        ("from", f"{model} ({r.family})"),
        ("MoE layers", f"{len(r.moe_layers)} (decoder layers {layer_ranges(r.moe_layers)})"),
        ("experts renumbered", f"{r.experts_moved} of {len(r.moe_layers) * p.num_experts}"),
        ("tensors", f"{r.tensors_renamed} per-expert tensors renamed, {r.tensors_permuted} router/fused tensors "
                    f"reordered, {r.files_copied} other files copied unchanged"),
        ("layout", f"GPU g of {p.num_gpus} holds new experts g*{p.num_experts // p.num_gpus} .. "
                   f"(g+1)*{p.num_experts // p.num_gpus}-1 (contiguous)"),
        ("mapping", f"{out / PROVENANCE}"),
    ]
    if r.skipped_layers:
        rows.append(("left as is", f"layers {layer_ranges(r.skipped_layers)} beyond num_hidden_layers (e.g. MTP)"))
    if r.omitted:
        rows.append(("left out", f"{', '.join(r.omitted)} (other weight files: they would keep the old numbering)"))
    console().print(kv_table(f"wrote {out}", rows))


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
