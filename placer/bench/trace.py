"""``moeplace bench trace``: the tracer's cost as a ratio of the plain forward pass on the same batches.

Both sides run the same sequences, batches and model call (left padding, ``logits_to_keep=1``), in the same
process, one after the other in every repeat (which goes first alternates), so that the machine's load
hits both alike:

1. **plain**: the forward passes alone.
2. **traced**: the same passes with the router hooks on, the expert ids stacked, padding dropped, rank order
   restored and the rows built (``trace_batches``), and written to a Parquet trace in a temporary folder.

The figure is the median over repeats of traced / plain. Only prefill is timed (decode steps are the same
hooks on one token per sequence; their cost is dominated by the model's per-step overhead).
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import typer

from placer.cli.common import console, kv_table, print_json
from placer.core.errors import InputError
from placer.tiny import BUNDLED_MODEL_DIR, REPO_TRACES_DIR


def _plain(model, seqs, opts, pad_id: int, device: str) -> None:
    # lazy: torch takes seconds to import; the tracer loads pyarrow (kept out of `moeplace --help`)
    import torch

    from placer.tracer.record import left_pad

    for start in range(0, len(seqs), opts.batch_size):
        ids, mask, pos = left_pad(seqs[start : start + opts.batch_size], pad_id)
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                        use_cache=False, logits_to_keep=1)
        out.logits.cpu()  # the same device sync the traced pass has


def _traced(lm, seqs, opts, out_path: Path) -> int:
    # lazy: loads pyarrow; kept out of `moeplace --help`
    from placer.core.trace.schema import TraceMeta
    from placer.core.trace.writer import TraceWriter
    from placer.tracer.record import RouterRecorder, trace_batches

    meta = TraceMeta(num_layers=len(lm.routers), num_experts=lm.num_experts, top_k=lm.top_k,
                     created_at="1970-01-01T00:00:00+00:00")
    n = 0
    with TraceWriter(out_path, meta, with_token_id=True, row_group_size=16384) as w, RouterRecorder(
        lm.routers, lm.adapter.weights_index, lm.adapter.indices_index
    ) as rec:
        for batch in trace_batches(lm.model, rec, seqs, opts, lm.tokenizer.pad_id, device=lm.device):
            w.write(batch)
            n += len(batch)
    return n


def bench_trace(
    text: Optional[List[Path]] = typer.Option(
        None, "--text", "-t", help="Text to run (default: traces/text/heldout.txt of the repository)."
    ),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder (default: the bundled model)."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Prompt tokens per pass."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Sequences per forward pass."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per sequence."),
    repeats: int = typer.Option(5, "--repeats", "-r", help="Timed repeats of each side (after one warm-up)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Time tracing against the plain forward pass on the same batches; print the ratio."""
    # lazy: torch takes seconds to import; the tracer loads pyarrow (kept out of `moeplace --help`)
    import torch

    from placer.tracer.load import load_model
    from placer.tracer.record import TraceOptions
    from placer.tracer.run import load_sequences

    if repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {repeats}")
    if threads > 0:
        torch.set_num_threads(threads)
    texts = text or [REPO_TRACES_DIR / "text" / "heldout.txt"]
    try:
        opts = TraceOptions(batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens, device=device, dtype=dtype)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    lm = load_model(model or BUNDLED_MODEL_DIR, opts.device, opts.dtype)
    seqs = load_sequences(texts, None, lm, opts)
    tokens = sum(len(s) for s in seqs)

    def sync() -> None:
        if lm.device == "cuda":
            torch.cuda.synchronize()

    plain_s, traced_s = [], []
    with tempfile.TemporaryDirectory(prefix="moeplace-bench-trace-") as tmp:
        out_path = Path(tmp) / "bench.parquet"
        _plain(lm.model, seqs, opts, lm.tokenizer.pad_id, lm.device)  # warm-up
        _traced(lm, seqs, opts, out_path)
        for r in range(repeats):
            # Alternate which side goes first, so that neither always runs on a warmer cache.
            for side in (("plain", "traced") if r % 2 == 0 else ("traced", "plain")):
                sync()
                t0 = time.perf_counter()
                if side == "plain":
                    _plain(lm.model, seqs, opts, lm.tokenizer.pad_id, lm.device)
                else:
                    n = _traced(lm, seqs, opts, out_path)
                    assert n == tokens, (n, tokens)
                sync()
                (plain_s if side == "plain" else traced_s).append(time.perf_counter() - t0)
    ratios = [t / p for t, p in zip(traced_s, plain_s)]
    result = {
        "model": lm.name, "family": lm.adapter.family, "device": lm.device, "dtype": lm.dtype,
        "gpu": torch.cuda.get_device_name(0) if lm.device == "cuda" else None,
        "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
        "tokens": tokens, "batch_size": batch_size, "seq_len": seq_len, "repeats": repeats,
        "plain_s_median": round(statistics.median(plain_s), 4),
        "traced_s_median": round(statistics.median(traced_s), 4),
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_min": round(min(ratios), 4), "ratio_max": round(max(ratios), 4),
        "overhead_pct_median": round(100 * (statistics.median(ratios) - 1), 1),
    }
    if as_json:
        print_json(result)
        return
    console().print(kv_table("bench trace: tracing vs the plain forward pass, same batches", [
        ("model", f"{result['model']} ({result['family']}) on {result['device']} {result['dtype']}"
                  + (f", {result['gpu']}" if result["gpu"] else f", {result['cpu_threads']} CPU threads")),
        ("tokens per pass", f"{tokens:,} ({len(seqs)} sequences, batches of {batch_size})"),
        ("plain forward (median)", f"{result['plain_s_median']:.3f} s ({tokens / result['plain_s_median']:,.0f} tok/s)"),
        ("traced, written (median)", f"{result['traced_s_median']:.3f} s ({tokens / result['traced_s_median']:,.0f} tok/s)"),
        ("traced / plain", f"{result['ratio_median']:.3f} (min {result['ratio_min']:.3f}, max {result['ratio_max']:.3f}, "
                           f"{repeats} repeats): overhead {result['overhead_pct_median']:+.1f} %"),
    ]))


def register(bench_app: typer.Typer) -> None:
    bench_app.command("trace")(bench_trace)
