"""``moeplace trace``: record the routing of a local Hugging Face MoE model, or of a running server, on text."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from placer.cli.common import UsageError, console, kv_table
from placer.export.layers import layer_ranges
from placer.progress import progress_bar
from placer.tiny import BUNDLED_MODEL_DIR

LOCAL_DEFAULTS = {"batch_size": 8, "seq_len": 256, "device": "cpu", "dtype": "auto"}


def trace(
    text: List[Path] = typer.Option(
        ..., "--text", "-t", help="Text to feed: plain text (one document, cut into --seq-len pieces) or JSONL "
        "prompts (.jsonl, or any file with --text-field). Repeat for several files. With --server: JSONL prompts, "
        "one request each."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output trace (.parquet)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Local Hugging Face model folder (default: the bundled tiny MoE model; nothing "
        "is downloaded). With --server: the model name the server knows (default: the first of its /v1/models)."
    ),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="JSONL field holding the prompt (default 'text')."),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", help="At most this many prompt (prefill) tokens, spent in prompt order (the last "
        "prompt is cut; with --server it keeps only its prompt rows); decode tokens come on top."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Sequences per forward pass \\[default: 8]."),
    seq_len: Optional[int] = typer.Option(
        None, "--seq-len", help="Tokens per sequence (prompts are truncated to it) \\[default: 256]."
    ),
    generate: int = typer.Option(
        0, "--generate", help="Also decode N new tokens per prompt greedily and record them as decode phase."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto (cuda when available) \\[default: cpu]."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="auto (float32 on CPU, the checkpoint's on GPU), float32, bfloat16, float16 \\[default: auto]."
    ),
    server: Optional[str] = typer.Option(
        None, "--server", help="Trace a running OpenAI-compatible server at this URL (http://host:port) instead of "
        "a local model: each prompt is one /v1/completions request asking for the routed experts. "
        "See docs/server-trace.md."
    ),
    engine: Optional[str] = typer.Option(
        None, "--engine", help="With --server: the serving stack, vllm, sglang or trtllm (its routing option, "
        "response field, encoding and layer numbering differ)."
    ),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="With --server: requests in flight."),
    retries: int = typer.Option(
        2, "--retries", help="With --server: retries of a request that fails (connection, HTTP 408/429/5xx, a "
        "malformed body, no routing); then it is counted, named in the summary and left out of the trace."
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="With --server: seconds one request may take."),
    domain_field: Optional[str] = typer.Option(
        None, "--domain-field", help="With --server: JSONL field naming each prompt's domain (recorded per token; "
        "the names go to the metadata's domain_names; a line without it gets the domain 'unknown')."
    ),
    model_config: Optional[Path] = typer.Option(
        None, "--model-config", help="With --server: the served model's config.json (or its folder): decoder "
        "layers, which are MoE layers (their indices go to the trace), experts, top-k."
    ),
    num_layers: Optional[int] = typer.Option(
        None, "--num-layers", help="With --server, without --model-config: the layers the stack sends: the model's "
        "num_hidden_layers for vllm and sglang, its MoE layers for trtllm (SGLang does not send the shape)."
    ),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="With --server: experts per token (SGLang does not send it)."),
    num_experts: Optional[int] = typer.Option(
        None, "--num-experts", help="With --server: routed experts per layer (no stack sends it)."
    ),
) -> None:
    """Record, for every token and every MoE layer, the experts the model's router chose.

    Locally: hooks the router module of each MoE layer (the indices it returns, after any group limit or
    correction bias; shared experts are not routed experts), drops padding with the attention mask and streams
    the trace to a Parquet file. Supported families: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3,
    GPT-OSS (placer/tracer/adapters.py).

    With --server URL --engine vllm|sglang: sends the JSONL prompts to a running server started with its
    return-routed-experts flag and records the logical expert ids it returns (before any EPLB remapping), the
    prompt tokens as prefill and --generate greedy tokens as decode. Layers the stack sends that are dense
    (rows of zeros) are dropped; --model-config names the MoE layers exactly. Gate weights are not returned
    by any stack: the trace marks them absent (weights_from_source false) and holds 1/K.
    """
    local = {"batch_size": batch_size, "seq_len": seq_len, "device": device, "dtype": dtype}
    if server is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in local.items() if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only for a local model, not with --server")
        _trace_server(server, engine, text, out, model, text_field, max_tokens, generate, concurrency, retries,
                      timeout, domain_field, model_config, num_layers, top_k, num_experts)
        return
    server_only = {"--engine": engine, "--domain-field": domain_field, "--model-config": model_config,
                   "--num-layers": num_layers, "--top-k": top_k, "--num-experts": num_experts}
    given = [k for k, v in server_only.items() if v is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: only with --server URL")
    _trace_local(text, out, model, text_field, max_tokens, generate,
                 **{k: (v if v is not None else LOCAL_DEFAULTS[k]) for k, v in local.items()})


def _trace_local(text, out, model, text_field, max_tokens, generate, batch_size, seq_len, device, dtype) -> None:
    # lazy: loads pyarrow; kept out of `moeplace --help`
    from placer.tracer.record import TraceOptions
    from placer.tracer.run import trace_model

    try:
        opts = TraceOptions(batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens, generate=generate,
                            device=device, dtype=dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    model_dir = Path(model) if model is not None else BUNDLED_MODEL_DIR
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


def _trace_server(url, engine, text, out, model, text_field, max_tokens, generate, concurrency, retries, timeout,
                  domain_field, model_config, num_layers, top_k, num_experts) -> None:
    # lazy: loads pyarrow; kept out of `moeplace --help`
    from placer.tracer.engines import engine_for
    from placer.tracer.server import ServerOptions, describe_failures, trace_server

    if engine is None:
        raise UsageError("--server needs --engine vllm, sglang or trtllm")
    stack = engine_for(engine)
    try:
        opts = ServerOptions(url=url, engine=engine, model=model, generate=generate, concurrency=concurrency,
                             retries=retries, timeout_s=timeout, max_tokens=max_tokens)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    res = trace_server(opts, text, out, text_field=text_field, domain_field=domain_field, model_config=model_config,
                       num_layers=num_layers, top_k=top_k, num_experts=num_experts,
                       progress=lambda total: progress_bar(total, "trace", unit="req", status=True))
    c = res.counts
    rows = [("server", f"{res.meta.extra['server'] if res.meta else url} ({stack.stack}"
                       f"{' ' + res.server_version if res.server_version else ''})")]
    if res.meta is not None:
        m = res.meta
        rows += [
            ("model", m.model_name),
            ("shape (L, E, K)", f"{m.num_layers} MoE layers x {m.num_experts} experts x top-{m.top_k}"),
            ("MoE layer indices", f"{layer_ranges(m.moe_layer_indices)} ({m.extra['moe_layers_from']})"),
        ]
    rows += [
        ("sequences", f"{c.sequences:,} complete of {res.requests:,} answered requests"),
        ("tokens", f"{c.tokens:,} (prefill {c.prefill_tokens:,}, decode {c.decode_tokens:,})"),
        ("speed", f"{c.tokens / max(res.wall_time_s, 1e-9):,.0f} tok/s"),
        ("gate weights", "not returned by the server: marked absent, not stored (read as 1/K)"),
        ("failed requests", f"{len(res.failures):,}" + (" (each one in the trace's metadata: extra.failed_requests)"
                                                         if res.failures and res.path else "")),
    ]
    rows += [("failed", line) for line in describe_failures(res.failures)]
    if res.meta is not None and res.meta.extra.get("prompts_without_domain"):
        x = res.meta.extra
        rows.append(("domains", f"{x['prompts_without_domain']:,} prompts without field '{x['domain_field']}': "
                                f"domain '{x['domain_default']}'"))
    if res.cut is not None:
        where, tokens, kept = res.cut
        rows.append(("cut by --max-tokens", f"{where}: {kept:,} of its {tokens:,} prompt tokens kept, no decode rows"))
    if res.over_budget:
        rows.append(("over --max-tokens", f"{res.over_budget:,} prompts not traced"))
    title = f"wrote {res.path}" if res.path else "nothing written"
    if res.interrupted:
        title = f"interrupted: {title} ({c.sequences:,} complete sequences kept)"
    console().print(kv_table(title, rows))
    if res.interrupted:
        raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
