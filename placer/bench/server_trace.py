"""``moeplace bench server-trace``: how fast ``trace --server`` turns a server's routing into a trace.

For each engine that can return routing over HTTP (vLLM, SGLang; TensorRT-LLM's OpenAI server cannot, so
``trace --server --engine trtllm`` stops with exit code 2 and there is nothing to time) a local fake server
(``placer.tracer.engines.fake``, answering as the stack's code does) runs in
a child process, so that it has a core of its own and its cost is not counted; the client here sends JSONL
prompts with ``--concurrency`` requests in flight and writes the trace, exactly as ``moeplace trace --server``
does (``trace_server``). The figure is trace tokens (prefill + decode) per second of wall time, from the first
request to the trace's rename into place. The model shape defaults to DeepSeek-V3 (61 decoder layers, the first
3 dense, 256 routed experts, top-8): vLLM and SGLang send all 61 layers.

Baseline, same run: the trace written again from memory by ``TraceWriter`` alone (no server, no decoding),
which bounds what any client can reach on the machine.

Memory: ``responses held`` is the most responses received but not yet written at any moment (bounded by the
queue of ``--concurrency`` places); ``peak RSS`` is this process's (``ru_maxrss``, so far: the second engine's
figure includes the first's), which does not grow with ``--tokens`` (compare two sizes). CPU seconds of the client (this process, every thread) and of the fake
server (the child) are reported beside the wall time: on a shared machine the wall time counts other people's
work too.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from placer.cli.common import console, kv_table, print_json
from placer.core.errors import InputError


def _cpu(who: int) -> float:
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


def _writer_alone(trace: Path, out: Path) -> float:
    """Seconds to write the same trace again from memory with ``TraceWriter`` as ``trace --server`` does (batches
    of 16,384 tokens, no weights column): the baseline that bounds it whatever the network and decoding cost."""
    # lazy: loads pyarrow; kept out of `moeplace --help`
    from placer.core.trace.reader import read_trace
    from placer.core.trace.schema import RoutingBatch
    from placer.core.trace.writer import TraceWriter

    meta, b = read_trace(trace, fields=("experts", "seq", "position", "phase", "token"))
    t0 = time.perf_counter()
    with TraceWriter(out, meta, with_token_id=True, with_weights=False, row_group_size=16384) as w:
        for s in range(0, len(b), 16384):
            part = slice(s, s + 16384)
            w.write(RoutingBatch(b.experts_TLK[part], seq_T=b.seq_T[part], position_T=b.position_T[part],
                                 phase_T=b.phase_T[part], token_T=b.token_T[part]))
    return time.perf_counter() - t0


def _prompts(path: Path, n: int, words: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": " ".join(f"w{i}_{j}" for j in range(words))}) + "\n")


def bench_server_trace(
    engine: Optional[str] = typer.Option(None, "--engine", help="vllm or sglang \\[default: both]."),
    tokens: int = typer.Option(100_000, "--tokens", help="Trace tokens to produce (prompts are sized to reach it)."),
    prompt_tokens: int = typer.Option(200, "--prompt-tokens", help="Tokens per prompt."),
    generate: int = typer.Option(50, "--generate", help="Decode tokens per prompt."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="Requests in flight."),
    layers: int = typer.Option(61, "--layers", help="Decoder layers of the fake model."),
    dense: int = typer.Option(3, "--dense", help="Leading dense layers (DeepSeek's first_k_dense_replace)."),
    experts: int = typer.Option(256, "--experts", help="Routed experts per layer."),
    top_k: int = typer.Option(8, "--top-k", help="Experts per token."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Time trace --server against a local fake vLLM / SGLang server; print tokens/s and memory."""
    # lazy: loads pyarrow; kept out of `moeplace --help`
    from placer.tracer.engines.fake import FakeModel, serve_forever
    from placer.tracer.server import ServerOptions, trace_server

    engines = [engine] if engine else ["vllm", "sglang"]
    for e in engines:
        if e not in ("vllm", "sglang"):
            why = (" (TensorRT-LLM's OpenAI server cannot return routing: trace --server --engine trtllm stops with "
                   "exit code 2; import its LLM API outputs instead, docs/server-trace.md)" if e == "trtllm" else "")
            raise InputError(f"--engine: {e!r} has no fake server that returns routing{why}; choose vllm or sglang")
    if min(tokens, prompt_tokens, concurrency, layers - dense, experts, top_k) < 1 or generate < 0 or dense < 0:
        raise InputError("--tokens, --prompt-tokens, --concurrency, --experts, --top-k and layers - dense must be positive")
    model = FakeModel(num_hidden_layers=layers, moe_layers=tuple(range(dense, layers)), num_experts=experts, top_k=top_k)
    per_prompt = prompt_tokens + generate
    n_prompts = -(-tokens // per_prompt)
    results = []
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="moeplace-bench-server-") as tmp:
        d = Path(tmp)
        _prompts(d / "prompts.jsonl", n_prompts, prompt_tokens)
        (d / "config.json").write_text(json.dumps(model.config()))
        for e in engines:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=serve_forever, args=(e, model, child), daemon=True)
            proc.start()
            try:
                url = parent.recv() if parent.poll(60) else None
                if url is None:
                    raise InputError("the fake server did not start within 60 s")
                opts = ServerOptions(url=url, engine=e, generate=generate, concurrency=concurrency, retries=0)
                child0 = _cpu(resource.RUSAGE_CHILDREN)
                t0, cpu0 = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
                res = trace_server(opts, [d / "prompts.jsonl"], d / f"{e}.parquet", model_config=d / "config.json")
                wall, client_cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - cpu0
            finally:
                proc.terminate()
                proc.join(10)
            server_cpu = _cpu(resource.RUSAGE_CHILDREN) - child0  # the child, reaped by join
            n = res.counts.tokens
            results.append({
                "engine": e, "tokens": n, "sequences": res.counts.sequences, "failed": len(res.failures),
                "wall_s": round(wall, 3), "tokens_per_s": round(n / wall), "requests_per_s": round(res.requests / wall, 1),
                "client_cpu_s": round(client_cpu, 2), "client_tokens_per_cpu_s": round(n / max(client_cpu, 1e-9)),
                "server_cpu_s": round(server_cpu, 2),
                "responses_held_max": res.max_held, "trace_mb": round((d / f"{e}.parquet").stat().st_size / 2**20, 1),
                "trace_bytes_per_token": round((d / f"{e}.parquet").stat().st_size / max(n, 1), 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            })
        for r in results:  # after every run: reading a whole trace back would inflate the peak RSS above
            r["writer_alone_tokens_per_s"] = round(r["tokens"] / _writer_alone(d / f"{r['engine']}.parquet",
                                                                                d / "again.parquet"))
    info = {"machine": platform.machine(), "python": platform.python_version(), "concurrency": concurrency,
            "shape": f"{layers} layers ({dense} dense) x {experts} experts x top-{top_k}",
            "prompt_tokens": prompt_tokens, "generate": generate, "results": results}
    if as_json:
        print_json(info)
        return
    rows = [("shape", info["shape"]), ("requests", f"{n_prompts:,} prompts of {prompt_tokens} tokens + {generate} "
                                                    f"generated, {concurrency} in flight")]
    for r in results:
        rows.append((r["engine"], f"{r['tokens']:,} tokens in {r['wall_s']:.2f} s: {r['tokens_per_s']:,} tok/s "
                                  f"({r['requests_per_s']} req/s; the writer alone: "
                                  f"{r['writer_alone_tokens_per_s']:,} tok/s); CPU: client {r['client_cpu_s']} s "
                                  f"({r['client_tokens_per_cpu_s']:,} tok per CPU-s), fake server {r['server_cpu_s']} s; "
                                  f"{r['failed']} failed, held <= "
                                  f"{r['responses_held_max']} responses, trace {r['trace_mb']} MB "
                                  f"({r['trace_bytes_per_token']} B/token), "
                                  f"peak RSS {r['peak_rss_mb']} MB"))
    console().print(kv_table("bench server-trace: fake server in a child process, client and writer here", rows))


def register(bench_app: typer.Typer) -> None:
    bench_app.command("server-trace")(bench_server_trace)
