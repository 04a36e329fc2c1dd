"""``moeplace info``: a short summary of a trace."""

from __future__ import annotations

from pathlib import Path

import typer

from placer.cli.common import console, kv_table, print_json


def info(
    trace: Path = typer.Argument(..., help="Trace file (.parquet)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    weights: bool = typer.Option(False, "--weights", help="Also read and check the gate weights (finite, >= 0, "
                                 "within float16's range), as replay does; about four times as long."),
) -> None:
    """Shape, tokens, sequences, phases and missing rows of a trace.

    Every expert id is read and checked; the gate weights only with --weights (docs/trace-format.md, Validation).
    """
    # lazy: loads pyarrow; kept out of `moeplace --help`
    from placer.core.trace.summary import summarize

    s = summarize(trace, weights=weights)
    if as_json:
        print_json(s)
        return
    missing = s["missing_token_layers"]
    rows = [
        ("model", f"{s['model_name']} ({s['model_family']})"),
        ("source", s["source"]),
        ("created", s["created_at"]),
        ("shape (L, E, K)", f"{s['num_layers']} layers x {s['num_experts']} experts x top-{s['top_k']}"),
        ("tokens", f"{s['tokens']:,}"),
        ("sequences", f"{s['sequences']:,}"),
        ("phases", ", ".join(f"{k} {v:,}" for k, v in s["phases"].items())),
        ("missing token-layers", f"{missing:,}" + (f" ({s['tokens_with_missing_layers']:,} tokens)" if missing else "")),
        ("file", f"{s['file_bytes']:,} bytes, {s['row_groups']} row groups, schema v{s['schema_version']}"),
        ("gate weights", s["gate_weights"] + ("; checked: finite, >= 0, within float16's range" if weights else
                                              "; not read (--weights checks them)")),
    ]
    console().print(kv_table(str(trace), rows))


def register(app: typer.Typer) -> None:
    app.command("info")(info)
