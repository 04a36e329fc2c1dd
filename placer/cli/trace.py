"""``moeplace trace``: record the routing of a local Hugging Face MoE model on text."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from placer.cli.common import UsageError


def trace(
    text: List[Path] = typer.Option(
        ..., "--text", "-t", help="Text to feed: plain text (one document, cut into --seq-len pieces) or JSONL "
        "prompts (.jsonl, or any file with --text-field). Repeat for several files."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output trace (.parquet)."),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", help="Local Hugging Face model folder (default: the bundled tiny MoE model). "
        "Nothing is downloaded."
    ),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="JSONL field holding the prompt (default 'text')."),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", help="At most this many prompt (prefill) tokens; decode tokens come on top."
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Sequences per forward pass."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per sequence (prompts are truncated to it)."),
    generate: int = typer.Option(
        0, "--generate", help="Also decode N new tokens per prompt greedily and record them as decode phase."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto (cuda when available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, the checkpoint's on GPU), float32, bfloat16, float16."),
) -> None:
    """Record, for every token and every MoE layer, the experts the model's router chose.

    Hooks the router module of each MoE layer (the indices it returns, after any group limit or correction
    bias; shared experts are not routed experts), drops padding with the attention mask and streams the
    trace to a Parquet file. Supported families: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3,
    GPT-OSS (placer/tracer/adapters.py).
    """
    from placer.cli.common import console, kv_table
    from placer.progress import progress_bar
    from placer.tiny import BUNDLED_MODEL_DIR
    from placer.tracer.record import TraceOptions
    from placer.tracer.run import trace_model

    try:
        opts = TraceOptions(batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens, generate=generate,
                            device=device, dtype=dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    model_dir = model if model is not None else BUNDLED_MODEL_DIR
    res = trace_model(model_dir, text, out, opts, text_field=text_field,
                      progress=lambda total: progress_bar(total, "trace", unit="tok"))
    m = res.meta
    total = res.prefill_tokens + res.decode_tokens
    console().print(kv_table(f"wrote {out}", [
        ("model", f"{m.model_name} ({m.extra['family']}, {m.extra['device']}, {m.extra['dtype']})"),
        ("shape (L, E, K)", f"{m.num_layers} MoE layers x {m.num_experts} experts x top-{m.top_k}"),
        ("MoE layer indices", ", ".join(map(str, m.moe_layer_indices))),
        ("sequences", f"{res.sequences:,}"),
        ("tokens", f"{total:,} (prefill {res.prefill_tokens:,}, decode {res.decode_tokens:,})"),
        ("speed", f"{total / max(res.wall_time_s, 1e-9):,.0f} tok/s"),
    ]))


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
