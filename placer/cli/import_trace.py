"""``moeplace import``: routing logs of other tools (long-format JSONL/CSV/Parquet, SGLang per-token dumps, saved
serving-stack outputs with routed experts) into the trace format."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from placer.cli.common import UsageError, console, kv_table
from placer.core.limits import MAX_EXPERTS
from placer.export.layers import layer_ranges


class LogFormat(str, Enum):
    auto = "auto"
    long = "long"
    sglang = "sglang"
    vllm_routed = "vllm-routed"
    sglang_routed = "sglang-routed"
    trtllm_routed = "trtllm-routed"


def import_(
    files: List[Path] = typer.Argument(..., help="Routing log file(s); several are concatenated."),
    out: Path = typer.Option(..., "--out", "-o", help="Output trace (.parquet)."),
    fmt: LogFormat = typer.Option(
        LogFormat.auto, "--format", metavar="FORMAT", help="long: one record per token per layer (JSONL, CSV, Parquet); "
        "sglang: SGLang per_token expert-distribution dump (.pt); vllm-routed, sglang-routed: JSONL of saved "
        "response bodies with routed experts (or, vllm-routed and trtllm-routed, .pt records of LLM.generate "
        "outputs; docs/server-trace.md); auto: long or sglang by file extension."
    ),
    layer_field: str = typer.Option("layer", "--layer-field", help="Field with the (model's) layer index."),
    token_field: str = typer.Option("token", "--token-field", help="Field identifying the token (within its sequence)."),
    experts_field: str = typer.Option("experts", "--experts-field", help="Field with the chosen expert ids, in rank order."),
    weights_field: Optional[str] = typer.Option(
        None, "--weights-field", help="Field with the gate weights [default: 'weights' if present, else 1/K]."
    ),
    sequence_field: Optional[str] = typer.Option(
        None, "--sequence-field", help="Field with the sequence (request) id [default: 'sequence' if present]."
    ),
    position_field: Optional[str] = typer.Option(
        None, "--position-field", help="Field with the position in the sequence [default: 'position' if present]."
    ),
    phase_field: Optional[str] = typer.Option(
        None, "--phase-field", help="Field with prefill/decode (or 0/1) [default: 'phase' if present]."
    ),
    num_experts: Optional[int] = typer.Option(
        None, "--num-experts", help="Experts per layer, when the log does not use the largest id."
    ),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Experts per token [default: from the first record]."),
    num_layers: Optional[int] = typer.Option(
        None, "--num-layers", help="*-routed: the layers the stack sends (num_hidden_layers for vllm and sglang, "
        "MoE layers for trtllm), where the saved routing has no shape (sglang)."
    ),
    model_config: Optional[Path] = typer.Option(
        None, "--model-config", help="*-routed: the model's config.json (or folder): MoE layers, experts, top-k."
    ),
    model_name: str = typer.Option("unknown", "--model-name", help="Model name recorded in the trace metadata."),
) -> None:
    """Convert routing logs of other tools into a moeplace trace.

    Tokens missing at some layers (logs drop rows) are kept as missing there, reported, and never paired
    with another token's routing.
    """
    # lazy: loads pyarrow and pandas; kept out of `moeplace --help`
    from placer.importers import FieldMap, import_long, import_sglang_per_token
    from placer.core.trace.writer import write_trace

    if num_experts is not None and not 1 <= num_experts <= MAX_EXPERTS:
        raise UsageError(f"--num-experts must be between 1 and {MAX_EXPERTS:,} (expert ids are stored as uint32), "
                         f"got {num_experts}")
    if fmt.value.endswith("-routed"):
        _import_routed(files, out, fmt.value, model_config, num_layers, top_k, num_experts, model_name)
        return
    if num_layers is not None or model_config is not None:
        raise UsageError("--num-layers and --model-config are for the *-routed formats")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be positive, got {top_k}")
    kind = fmt.value
    if kind == "auto":
        kind = "sglang" if all(f.suffix == ".pt" for f in files) else "long"
    if kind == "sglang":
        meta, batch, report = import_sglang_per_token(files, num_experts=num_experts, model_name=model_name)
    else:
        fields = FieldMap(layer=layer_field, token=token_field, experts=experts_field, weights=weights_field,
                          sequence=sequence_field, position=position_field, phase=phase_field)
        meta, batch, report = import_long(files, fields, num_experts=num_experts, top_k=top_k, model_name=model_name)
    write_trace(out, meta, batch)
    rows = [
        ("format", report.source_format),
        ("records read", f"{report.records:,}"),
        ("shape (L, E, K)", f"{meta.num_layers} x {meta.num_experts} x top-{meta.top_k}"),
        ("model layer indices", _ranges(meta.moe_layer_indices)),
        ("tokens", f"{report.tokens:,}"),
        ("missing token-layers", f"{report.missing_token_layers:,}"),
        ("tokens with missing layers", f"{report.tokens_with_missing_layers:,}"),
    ]
    rows += [("note", n) for n in report.notes]
    console().print(kv_table(f"wrote {out}", rows))


def _import_routed(files, out, fmt, model_config, num_layers, top_k, num_experts, model_name) -> None:
    # lazy: loads pyarrow; kept out of `moeplace --help`
    from placer.importers_routed import import_routed

    path, meta, report = import_routed(files, fmt, out, model_config=model_config, num_layers=num_layers,
                                       top_k=top_k, num_experts=num_experts, model_name=model_name)
    c = report.counts
    rows = [
        ("format", report.source_format),
        ("records read", f"{report.records:,}"),
        ("shape (L, E, K)", f"{meta.num_layers} x {meta.num_experts} x top-{meta.top_k}"),
        ("model layer indices", f"{layer_ranges(meta.moe_layer_indices)} ({meta.extra['import']['moe_layers_from']})"),
        ("sequences", f"{c.sequences:,}"),
        ("tokens", f"{c.tokens:,} (prefill {c.prefill_tokens:,}, decode {c.decode_tokens:,})"),
    ]
    rows += [("note", n) for n in report.notes]
    console().print(kv_table(f"wrote {path}", rows))


def _ranges(idx) -> str:
    idx = list(idx)
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return f"{idx[0]}..{idx[-1]}"
    return ", ".join(map(str, idx[:12])) + (" ..." if len(idx) > 12 else "")


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
