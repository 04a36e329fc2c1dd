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
  Or the stack's output objects themselves (``torch.save(llm.generate(...))``: a list of ``RequestOutput``),
  read by attribute as vllm 0.33.0 ``vllm/outputs.py`` names them: ``RequestOutput.prompt_token_ids`` and
  ``.outputs``, each ``CompletionOutput`` with ``.token_ids`` and ``.routed_experts``. Still with
  ``weights_only=True`` and without the stack installed: every class of the stack's package (``vllm.*`` or
  ``tensorrt_llm.*``) is allowed under its pickled name as an inert stand-in (``_Foreign``) that only keeps
  the attributes the file holds, NumPy arrays as NumPy rebuilds them, and anything else is refused; nothing
  the file names is imported or run.

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

from placer.core.errors import InputError, first_line, plain_text
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


# The packages whose output objects a format reads by attribute (``torch.save(llm.generate(...))``).
STACK_PACKAGES = {"vllm": "vllm", "trtllm": "tensorrt_llm"}


class _Foreign:
    """An object of a serving stack's class as ``torch.save`` pickled it, rebuilt without the class: it keeps the
    attributes the file holds (``__dict__`` and slots, or the constructor's arguments in ``_args``), and none of
    the stack's code runs. One subclass per pickled class name (``_pickled_as``)."""

    _pickled_as = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Foreign":
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the class: nothing to do
        pass

    def __setstate__(self, state: Any) -> None:
        parts = state if isinstance(state, tuple) and len(state) == 2 and all(
            p is None or isinstance(p, dict) for p in state) else (state,)
        for part in parts:
            if isinstance(part, dict):
                self.__dict__.update(part)
            elif part is not None:
                self.__dict__["_state"] = part


def _numpy_globals() -> dict[str, Any]:
    """What rebuilds a pickled NumPy array or scalar (nothing that runs other code), under both module names."""
    core = getattr(np, "_core", None) or np.core
    found: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        found[f"{mod}.multiarray._reconstruct"] = core.multiarray._reconstruct
        found[f"{mod}.multiarray.scalar"] = core.multiarray.scalar
    dtypes = getattr(np, "dtypes", None)  # NumPy 2 pickles a dtype's class too (numpy.dtypes.UInt8DType)
    for name in dir(dtypes) if dtypes is not None else ():
        cls = getattr(dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            found[f"numpy.dtypes.{name}"] = cls
    return found


def _load_torch(path: Path, engine) -> Any:
    """``torch.load(weights_only=True)`` of plain records, or of the stack's output objects as ``_Foreign``."""
    import torch  # lazy: torch takes seconds to import

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        plain_error = _torch_reason(exc)
    ser = torch.serialization
    package = STACK_PACKAGES.get(engine.name, "")
    hint = ("save plain records: lists, dicts, ints and tensors (torch.as_tensor(routed_experts)), as "
            "docs/server-trace.md shows")
    if not (hasattr(ser, "get_unsafe_globals_in_checkpoint") and hasattr(ser, "safe_globals")):
        raise InputError(f"{path}: not a torch file of plain records ({plain_error}); this torch "
                         f"({torch.__version__}) cannot read output objects safely: {hint}") from None
    try:
        names = list(ser.get_unsafe_globals_in_checkpoint(path))
    except Exception as exc:
        raise InputError(f"{path}: not a torch file ({first_line(exc, 160)})") from None
    numpy_globals = _numpy_globals()
    # Every NumPy entry, named in the file or not: a dtype is rebuilt by numpy.dtype but is then an instance of
    # its numpy.dtypes class, which torch must also allow before it sets the dtype's state.
    allowed: list[tuple[Any, str]] = [(obj, name) for name, obj in numpy_globals.items()]
    refused = []
    for name in names:
        if package and name.startswith(package + "."):
            allowed.append((type(name.rsplit(".", 1)[-1], (_Foreign,), {"_pickled_as": name, "__module__": __name__}),
                            name))
        elif name not in numpy_globals:
            refused.append(name)
    if refused:
        other = next((fmt for fmt, name in FORMATS.items() if name != engine.name and name in STACK_PACKAGES
                      and any(n.startswith(STACK_PACKAGES[name] + ".") for n in refused)), None)
        if other is not None:
            raise InputError(f"{path}: holds {STACK_PACKAGES[FORMATS[other]]} objects ({refused[0]}); read it with "
                             f"--format {other}") from None
        what = ", ".join(refused[:3]) + (f" and {len(refused) - 3} more" if len(refused) > 3 else "")
        raise InputError(f"{path}: neither plain records nor {engine.stack} output objects: it holds {what}, "
                         f"which moeplace does not unpickle; {hint}") from None
    try:
        with ser.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the {engine.stack} output objects ({_torch_reason(exc)}); "
                         f"{hint}") from None


def _torch_reason(exc: BaseException) -> str:
    """What torch.load(weights_only=True) could not take: the line after "WeightsUnpickler error:" (its first
    lines are general advice), else the first line; escape codes removed (``first_line``)."""
    text = plain_text(str(exc))
    if "WeightsUnpickler error:" in text:
        rest = [ln.strip() for ln in text.split("WeightsUnpickler error:", 1)[1].splitlines() if ln.strip()]
        if rest:
            return rest[0][:160]
    return first_line(exc, 160)


def _output_records(where: str, req: _Foreign) -> Iterator[tuple[str, dict[str, Any]]]:
    """A ``RequestOutput``'s sequences as plain records: one per ``CompletionOutput`` in ``outputs``."""
    outputs = getattr(req, "outputs", None)
    if not isinstance(outputs, list):
        raise InputError(f"{where}: a {req._pickled_as} without a list 'outputs'; expected RequestOutput objects")
    for j, out in enumerate(outputs):
        if not hasattr(out, "routed_experts"):
            raise InputError(f"{where}, outputs[{j}]: a {type(out).__name__} without 'routed_experts' (is this "
                             f"{req._pickled_as} from a release with routed experts?)")
        yield (f"{where}, outputs[{j}]" if len(outputs) > 1 else where,
               {"prompt_token_ids": getattr(req, "prompt_token_ids", None),
                "token_ids": getattr(out, "token_ids", None), "routed_experts": out.routed_experts})


def _torch_records(path: Path, engine) -> Iterator[tuple[str, Routed | None]]:
    data = _load_torch(path, engine)
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a list of records (dicts with 'routed_experts') or of RequestOutput "
                         f"objects, found {type(records).__name__}")
    for where, rec in _flat_records(path, records):
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


def _flat_records(path: Path, records: list) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        if isinstance(rec, _Foreign):
            yield from _output_records(where, rec)
        elif isinstance(rec, dict):
            yield where, rec
        else:
            raise InputError(f"{where}: is {type(rec).__name__}, expected a dict with 'routed_experts' or a "
                             f"RequestOutput")


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
    report.notes.append("gate weights are not returned by the stack: marked absent, not stored (read as 1/K)")
    if report.without_routing:
        report.notes.append(f"{report.without_routing} records without routing skipped")
    return path, sink.meta, report


def _records(path: Path, engine, plan: LayerPlan) -> Iterator[tuple[str, Routed | None]]:
    """(where, routed sequence or None when the record has no routing), checked, in file order."""
    if path.suffix == ".pt":
        if engine.name == "sglang":
            raise InputError(f"{path}: sglang-routed reads JSONL response bodies; a .pt file with --format "
                             f"sglang is SGLang's per-token expert-distribution dump")
        items = _torch_records(path, engine)
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
