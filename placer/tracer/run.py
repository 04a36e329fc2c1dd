"""Trace a model on text files into a trace file: the whole ``moeplace trace`` job, without the CLI."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Sequence

from placer.core.errors import InputError
from placer.core.trace.schema import TraceMeta
from placer.core.trace.writer import TraceWriter
from placer.tracer.load import LoadedModel, load_model
from placer.tracer.record import RouterRecorder, TraceOptions, count_planned, trace_batches
from placer.tracer.text import make_sequences, read_prompts


@dataclass
class TraceResult:
    path: Path
    meta: TraceMeta
    prefill_tokens: int
    decode_tokens: int
    sequences: int
    wall_time_s: float


def load_sequences(
    texts: Sequence[str | os.PathLike], text_field: str | None, lm: LoadedModel, opts: TraceOptions
) -> list[list[int]]:
    """Token sequences from the text files, in file order, within ``opts.max_tokens``."""
    seqs: list[list[int]] = []
    budget = opts.max_tokens
    for path in texts:
        items, separate = read_prompts(path, text_field)
        got = make_sequences(items, separate, lm.tokenizer, opts.seq_len, budget)
        seqs.extend(got)
        if budget is not None:
            budget -= sum(len(s) for s in got)
            if budget <= 0:
                break
    if not seqs:
        raise InputError(f"{texts[0]}: no tokens to trace")
    return seqs


def trace_model(
    model_dir: str | os.PathLike,
    texts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    opts: TraceOptions,
    text_field: str | None = None,
    progress: Callable[[int], ContextManager[Callable[[int], None]]] | None = None,
) -> TraceResult:
    """Load the model, tokenise the texts, record routing of prefill (and decode) tokens into ``out``.

    ``progress(total)`` opens a progress bar and yields its ``advance(n)`` (``placer.progress.progress_bar``).
    The file appears only when the whole trace was written (``TraceWriter`` is atomic).
    """
    if not texts:
        raise InputError("--text: give at least one text file")
    lm = load_model(model_dir, opts.device, opts.dtype)
    seqs = load_sequences(texts, text_field, lm, opts)
    planned = count_planned(seqs, opts.generate)
    meta = TraceMeta(
        num_layers=len(lm.routers), num_experts=lm.num_experts, top_k=lm.top_k, model_name=lm.name,
        model_family=lm.model_type, moe_layer_indices=lm.layer_indices, source="moeplace trace",
        extra={
            "text": [str(t) for t in texts], "text_field": text_field, "seq_len": opts.seq_len,
            "batch_size": opts.batch_size, "max_tokens": opts.max_tokens, "generate": opts.generate,
            "dtype": lm.dtype, "device": lm.device, "tokenizer": lm.tokenizer.kind,
            "family": lm.adapter.family,
        },
    )
    t0 = time.perf_counter()
    counts = [0, 0]
    bar = progress(planned) if progress is not None else contextlib.nullcontext(lambda n: None)
    with TraceWriter(out, meta, with_token_id=True, row_group_size=16384) as writer, RouterRecorder(
        lm.routers, lm.adapter.weights_index, lm.adapter.indices_index
    ) as rec, bar as advance:
        for batch in trace_batches(lm.model, rec, seqs, opts, lm.tokenizer.pad_id, lm.tokenizer.eos_ids, lm.device):
            writer.write(batch)
            n_dec = int(batch.phase_T.sum())
            counts[1] += n_dec
            counts[0] += len(batch) - n_dec
            advance(len(batch))
        advance(planned - counts[0] - counts[1])  # decoding that stopped early at end-of-sequence
    return TraceResult(Path(out), meta, counts[0], counts[1], len(seqs), time.perf_counter() - t0)
