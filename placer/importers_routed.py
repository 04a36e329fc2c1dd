"""Saved serving-stack outputs with routed experts (``--format vllm-routed|sglang-routed|trtllm-routed``) into a trace.

Teams that already log responses (RL rollout pipelines keep the routing to replay it in training) convert them
without a server. Two inputs, one sequence per routed choice, numbered in file order:

- **JSONL of response bodies** (vllm-routed, sglang-routed): one response body per line, exactly as the server
  sent it (``/v1/completions``, ``/v1/chat/completions``; SGLang's ``/generate`` too), decoded by the same
  engine modules as ``moeplace trace --server`` (``placer.tracer.engines``). A line is read, converted and
  dropped: memory holds one line and a row group.
- **torch files of offline outputs** (``.pt``; vllm-routed, trtllm-routed): a list of records saved with
  ``torch.save``, each a dict with ``routed_experts`` (a tensor ``[tokens, layers, top_k]``: vLLM's
  ``CompletionOutput.routed_experts``, TensorRT-LLM's likewise), ``prompt_token_ids`` (or the int
  ``prompt_tokens``) and optionally ``token_ids`` (the generated ids). Loaded with ``weights_only=True``.

Records whose routing is absent (a request aborted before its first forward pass, capture off) are counted and
skipped; a malformed record stops the import with a one-line error naming the file and line (exit code 2) and
no output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from placer.core.errors import InputError, first_line
from placer.core.fileio import require_file
from placer.core.trace.schema import TraceMeta
from placer.tracer.engines import BadResponse, NoRouting, Routed, ShapeMismatch, engine_for
from placer.tracer.routing import LayerPlan, RoutedSink, SinkCounts, check_rows, read_model_shape, routed_rows

FORMATS = {"vllm-routed": "vllm", "sglang-routed": "sglang", "trtllm-routed": "trtllm"}


@dataclass
class RoutedImportReport:
    source_format: str
    records: int = 0
    without_routing: int = 0
    counts: SinkCounts = field(default_factory=SinkCounts)
    notes: list[str] = field(default_factory=list)


def _jsonl_bodies(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("r", encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}: line {n}", json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path}: line {n}: not valid JSON ({first_line(exc, 80)})") from None


def _ints(value: Any, where: str, name: str) -> np.ndarray:
    arr = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{where}: '{name}' is not a list of token ids")
    return arr.astype(np.int64)


def _torch_records(path: Path) -> Iterator[tuple[str, Routed | None]]:
    import torch  # lazy: torch takes seconds to import

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        raise InputError(f"{path}: not a torch file of plain records ({first_line(exc, 160)}); save lists, dicts, "
                         f"ints and tensors (torch.as_tensor(routed_experts)), not output objects") from None
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a list of records (dicts with 'routed_experts'), found "
                         f"{type(records).__name__}")
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: is {type(rec).__name__}, expected a dict with 'routed_experts'")
        routes = rec.get("routed_experts")
        if routes is None:
            yield where, None
            continue
        experts = np.asarray(routes.cpu() if hasattr(routes, "cpu") else routes)
        if experts.ndim != 3 or not np.issubdtype(experts.dtype, np.integer):
            raise InputError(f"{where}: 'routed_experts' has shape {list(experts.shape)} and type {experts.dtype}, "
                             f"expected integers [tokens, layers, top_k]")
        if rec.get("prompt_token_ids") is not None:
            prompt_ids = _ints(rec["prompt_token_ids"], where, "prompt_token_ids")
            prompt = len(prompt_ids)
        elif isinstance(rec.get("prompt_tokens"), int):
            prompt_ids, prompt = None, int(rec["prompt_tokens"])
        else:
            raise InputError(f"{where}: no 'prompt_token_ids' (or int 'prompt_tokens'): prefill and decode rows "
                             f"cannot be told apart")
        out_ids = _ints(rec["token_ids"], where, "token_ids") if rec.get("token_ids") is not None else None
        tokens = np.concatenate([prompt_ids, out_ids]) if prompt_ids is not None and out_ids is not None else None
        yield where, Routed(experts, prompt, len(out_ids) if out_ids is not None else None, tokens)


def import_routed(
    paths: Sequence[str | Path],
    fmt: str,
    out: str | Path,
    *,
    model_config: str | Path | None = None,
    num_layers: int | None = None,
    top_k: int | None = None,
    num_experts: int | None = None,
    model_name: str = "unknown",
) -> tuple[Path, TraceMeta, RoutedImportReport]:
    """Convert saved outputs of ``fmt``'s stack into the trace ``out`` (written atomically)."""
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown routed format {fmt!r}; choose from {', '.join(FORMATS)}")
    engine = engine_for(FORMATS[fmt])
    files = [require_file(p, "routed-experts file") for p in paths]
    shape = read_model_shape(model_config) if model_config is not None else None
    plan = LayerPlan(engine, shape, num_layers, top_k, num_experts)
    report = RoutedImportReport(source_format=fmt)

    def make_meta(p: LayerPlan) -> TraceMeta:
        return TraceMeta(
            num_layers=len(p.keep_X), num_experts=p.num_experts, top_k=p.top_k, model_name=model_name,
            model_family=(shape.model_type if shape and shape.model_type else "imported"),
            moe_layer_indices=p.model_layers, source=f"import:{fmt}:{','.join(f.name for f in files)}",
            extra={"import": {"format": fmt, "engine": engine.name, "layer_axis": engine.layer_axis,
                              "wire_layers": p.wire_layers, "moe_layers_from": p.source,
                              "model_config": shape.path if shape else None, "weights_from_source": False}},
        )

    sink = RoutedSink(Path(out), plan, make_meta)
    try:
        for f in files:
            for where, routed in _records(f, engine, plan):
                report.records += 1
                if routed is None:
                    report.without_routing += 1
                    continue
                sink.add(routed_rows(routed, plan, sink.counts.sequences, None, where))
        path = sink.close()
    except BaseException:
        sink.abort()
        raise
    if path is None:
        raise InputError(f"{files[0]}: none of the {report.records} records carries routing (was the server started "
                         f"with {engine.server_flag}?)")
    report.counts = sink.counts
    report.notes.append("gate weights are not returned by the stack: marked absent, stored as 1/K")
    if report.without_routing:
        report.notes.append(f"{report.without_routing} records without routing skipped")
    return path, sink.meta, report


def _records(path: Path, engine, plan: LayerPlan) -> Iterator[tuple[str, Routed | None]]:
    """(where, routed sequence or None when the record has no routing), checked, in file order."""
    if path.suffix == ".pt":
        if engine.name == "sglang":
            raise InputError(f"{path}: sglang-routed reads JSONL response bodies; a .pt file with --format "
                             f"sglang is SGLang's per-token expert-distribution dump")
        items = _torch_records(path)
    elif engine.name == "trtllm":
        raise InputError(f"{path}: TensorRT-LLM's server responses carry no routing; save the LLM API outputs "
                         f"with torch.save as .pt records (docs/server-trace.md)")
    else:
        items = ((where, body) for where, body in _jsonl_bodies(path))
    for where, item in items:
        try:
            seqs = [item] if isinstance(item, Routed) or item is None else engine.extract(item, plan.wire_shape())
        except NoRouting:
            yield where, None
            continue
        except (BadResponse, ShapeMismatch) as exc:
            raise InputError(f"{where}: {exc}") from None
        for i, r in enumerate(seqs):
            if r is not None:
                try:
                    check_rows(r)
                except BadResponse as exc:
                    raise InputError(f"{where}{f', choice {i}' if len(seqs) > 1 else ''}: {exc}") from None
            yield where, r
