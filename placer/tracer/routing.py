"""From a serving stack's routing to trace rows: which of its layers are MoE layers, the checks, the sink.

Stacks number layers their own way (``Engine.layer_axis``): vLLM and SGLang send every decoder layer, dense ones
as rows of zeros; TensorRT-LLM sends MoE layers only. ``LayerPlan`` settles, from ``--model-config`` and the
shape options or else from the first routing received, which of the X layers on the wire are the L MoE layers
of the trace and what their decoder indices are (``moe_layer_indices``, which ``export`` needs in model
numbering). ``RoutedSink`` checks every sequence against the plan (the same layers and top-k in every response,
expert ids inside ``[0, E)``), turns it into rows and streams them to a ``TraceWriter``; a sequence is written
whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from placer.core.errors import InputError
from placer.core.fileio import read_json, read_model_config
from placer.core.limits import MAX_EXPERTS, MAX_LAYERS
from placer.core.trace.schema import PHASE_DECODE, PHASE_PREFILL, RoutingBatch, TraceMeta, expert_dtype
from placer.core.trace.writer import TraceWriter
from placer.tracer.engines.base import BadResponse, Engine, Routed, WireShape

EXPERT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_topk")


@dataclass(frozen=True)
class ModelShape:
    """What a Hugging Face ``config.json`` says about routing (None where it does not say)."""

    path: str
    model_type: str | None
    num_hidden_layers: int | None
    moe_layers: tuple[int, ...] | None
    num_experts: int | None
    top_k: int | None


def _first_int(cfg: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def moe_layer_indices(cfg: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """The decoder layers that hold routed experts, by the rule of the config's family (as transformers builds
    the model): DeepSeek-V2/V3, Kimi, GLM-4-MoE ``first_k_dense_replace``/``moe_layer_freq``; Qwen2/3-MoE
    ``mlp_only_layers``/``decoder_sparse_step``; every layer otherwise (Mixtral, OLMoE, GPT-OSS)."""
    if "first_k_dense_replace" in cfg or "moe_layer_freq" in cfg:
        first = int(cfg.get("first_k_dense_replace") or 0)
        freq = int(cfg.get("moe_layer_freq") or 1)
        return tuple(i for i in range(num_layers) if i >= first and i % freq == 0)
    if "decoder_sparse_step" in cfg or "mlp_only_layers" in cfg:
        step = int(cfg.get("decoder_sparse_step") or 1)
        dense = {int(i) for i in cfg.get("mlp_only_layers") or []}
        return tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)
    return tuple(range(num_layers))


def read_model_shape(path: str | os.PathLike) -> ModelShape:
    """``--model-config``: a ``config.json`` file, or a checkpoint folder holding one."""
    cfg_path = Path(path)
    if cfg_path.is_dir():
        cfg_path, cfg = read_model_config(cfg_path)
    else:
        cfg = read_json(cfg_path, "model config")
        if not isinstance(cfg, dict):
            raise InputError(f"{cfg_path}: expected a JSON object")
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg  # multimodal wrappers
    n = _first_int(text, ("num_hidden_layers",))
    return ModelShape(str(cfg_path), text.get("model_type") or cfg.get("model_type"), n,
                      moe_layer_indices(text, n) if n else None, _first_int(text, EXPERT_KEYS),
                      _first_int(text, TOP_K_KEYS))


def _agree(name: str, option: int | None, cfg: int | None, cfg_path: str | None) -> int | None:
    if option is not None and cfg is not None and option != cfg:
        raise InputError(f"--{name} {option} disagrees with {cfg_path} ({cfg})")
    return option if option is not None else cfg


class LayerPlan:
    """Which of the X layers a stack sends are the trace's L MoE layers, fixed by the first routing received.

    wire_layers, top_k: X and K every response must have (None until known); num_experts: E.
    keep_X: indices of the MoE layers on the wire; model_layers: their decoder indices; source: how that was
    decided (recorded in the trace's metadata).
    """

    def __init__(self, engine: Engine, shape: ModelShape | None, num_layers: int | None, top_k: int | None,
                 num_experts: int | None) -> None:
        cfg_path = shape.path if shape else None
        for name, v, most, why in (("num-layers", num_layers, MAX_LAYERS, "layers of a model"),
                                   ("top-k", top_k, None, None),
                                   ("num-experts", num_experts, MAX_EXPERTS, "expert ids are stored as uint32")):
            if v is not None and v < 1:
                raise InputError(f"--{name} must be positive, got {v}")
            if v is not None and most is not None and v > most:
                raise InputError(f"--{name} must be between 1 and {most:,} ({why}), got {v}")
        self.engine = engine
        self.shape = shape
        self.num_experts = _agree("num-experts", num_experts, shape.num_experts if shape else None, cfg_path)
        if self.num_experts is None:
            raise InputError("--num-experts (or --model-config config.json) is required: the responses do not say "
                             "how many experts a layer has")
        self.top_k = _agree("top-k", top_k, shape.top_k if shape else None, cfg_path)
        cfg_layers = None
        if shape is not None:
            cfg_layers = shape.num_hidden_layers if engine.layer_axis == "decoder" else (
                len(shape.moe_layers) if shape.moe_layers else None)
        self.wire_layers = _agree("num-layers", num_layers, cfg_layers, cfg_path)
        if not engine.shape_on_wire and (self.wire_layers is None or self.top_k is None):
            raise InputError(f"--engine {engine.name}: {engine.stack} sends routing without its shape; give "
                             f"--num-layers (the model's num_hidden_layers) and --top-k, or --model-config config.json")
        self.keep_X: np.ndarray | None = None
        self.dense_X = np.zeros(0, dtype=np.int64)  # wire layers dropped as dense (checked to stay zeros)
        self.keep_slice: slice | None = None
        self.model_layers: tuple[int, ...] = ()
        self.source = ""

    @property
    def fixed(self) -> bool:
        return self.keep_X is not None

    def wire_shape(self) -> WireShape | None:
        if self.wire_layers is None or self.top_k is None:
            return None
        return WireShape(self.wire_layers, self.top_k)

    def check(self, experts_TXK: np.ndarray, where: str) -> None:
        """Fix the plan on the first routing; check every later one against it (InputError: exit code 2)."""
        _, X, K = experts_TXK.shape
        if self.wire_layers is not None and X != self.wire_layers or self.top_k is not None and K != self.top_k:
            seen = "earlier responses" if self.fixed else "--num-layers/--top-k/--model-config"
            raise InputError(f"{where}: routing has {X} layers x top-{K}, but {seen} say {self.wire_layers} layers "
                             f"x top-{self.top_k}; the layer count or top-k changed")
        if self.top_k is not None and self.top_k > self.num_experts:
            raise InputError(f"top-k ({self.top_k}) exceeds --num-experts ({self.num_experts})")
        if not self.fixed:
            self.wire_layers, self.top_k = X, K
            self._fix(experts_TXK, where)
            self.dense_X = np.setdiff1d(np.arange(X), self.keep_X)
            k = self.keep_X
            if k.size and np.array_equal(k, np.arange(k[0], k[0] + k.size)):
                self.keep_slice = slice(int(k[0]), int(k[0]) + k.size)  # the usual case: a view, no copy
        elif self.dense_X.size and experts_TXK[:, self.dense_X, :].any():
            hit = experts_TXK[:, self.dense_X, :].any(axis=(0, 2))
            raise InputError(f"{where}: layer {int(self.dense_X[hit][0])} routes tokens, but it held only zeros (a "
                             f"dense layer) before ({self.source}); give --model-config config.json")

    def _fix(self, experts_TXK: np.ndarray, where: str) -> None:
        _, X, K = experts_TXK.shape
        cfg = self.shape
        if self.engine.layer_axis == "moe":
            self.keep_X = np.arange(X)
            if cfg is not None and cfg.moe_layers is not None and len(cfg.moe_layers) == X:
                self.model_layers, self.source = cfg.moe_layers, f"MoE layers of {cfg.path}"
            else:
                self.model_layers = tuple(range(X))
                self.source = "MoE layers 0..L-1 (no --model-config: decoder indices unknown)"
            return
        zero_X = ~experts_TXK.any(axis=(0, 2))
        if cfg is not None and cfg.moe_layers is not None:
            keep = np.asarray(cfg.moe_layers, dtype=np.int64)
            if keep.size and keep.max() >= X:
                raise InputError(f"{cfg.path}: MoE layer {int(keep.max())} is outside the {X} layers the server sends")
            dense = np.setdiff1d(np.arange(X), keep)
            if zero_X[dense].size and not zero_X[dense].all():
                raise InputError(f"{where}: layer {int(dense[~zero_X[dense]][0])} routes tokens, but {cfg.path} "
                                 f"makes it a dense layer; is it the served model's config?")
            if K > 1 and experts_TXK.shape[0] and zero_X[keep].any():
                raise InputError(f"{where}: layer {int(keep[zero_X[keep]][0])} holds only zeros (no top-{K} "
                                 f"routing), but {cfg.path} makes it an MoE layer; is it the served model's config?")
            self.keep_X, self.source = keep, f"model config {cfg.path}"
        elif K > 1 and experts_TXK.shape[0]:
            # A top-k router picks K distinct experts, so a layer whose rows are all zeros was never routed: dense.
            self.keep_X = np.nonzero(~zero_X)[0]
            if self.keep_X.size == 0:
                raise InputError(f"{where}: every layer's routing is zeros; the server did not capture routing")
            self.source = "inferred: layers whose routing is all zeros are dense"
        else:
            self.keep_X = np.arange(X)
            self.source = "all layers (top-1 or empty routing: dense layers cannot be told apart; give --model-config)"
        self.model_layers = tuple(int(i) for i in self.keep_X)


@dataclass
class SinkCounts:
    sequences: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


def check_rows(r: Routed) -> None:
    """The rows must cover the prompt and no more tokens than the server ran (BadResponse otherwise)."""
    T, P = int(r.experts_TXK.shape[0]), int(r.prompt_tokens)
    if T < P:
        raise BadResponse(f"routing covers {T} tokens, fewer than the prompt's {P}")
    if r.completion_tokens is not None and T > P + max(int(r.completion_tokens), 1) - 1:
        raise BadResponse(f"routing covers {T} tokens, more than the {P} prompt + {r.completion_tokens} "
                          f"generated - 1 that the server ran")


def routed_rows(r: Routed, plan: LayerPlan, seq_id: int, domain: int | None, where: str) -> RoutingBatch:
    """One sequence's rows (checked with ``check_rows`` before): its MoE layers in rank order, phase by
    position. InputError when the layers or top-k differ from the plan or ids leave ``[0, E)``."""
    plan.check(r.experts_TXK, where)
    T, P = int(r.experts_TXK.shape[0]), int(r.prompt_tokens)
    experts_TLK = r.experts_TXK[:, plan.keep_slice] if plan.keep_slice is not None else np.take(
        r.experts_TXK, plan.keep_X, axis=1)
    if experts_TLK.size:
        lo, hi = int(experts_TLK.min()), int(experts_TLK.max())
        if lo < 0 or hi >= plan.num_experts:
            bad = lo if lo < 0 else hi
            t, l, _ = (int(v[0]) for v in np.nonzero(experts_TLK == bad))
            raise InputError(f"{where}: token {t}, layer {plan.model_layers[l]} has expert id {bad}, outside [0, "
                             f"{plan.num_experts}) (--num-experts {plan.num_experts})")
    # The trace's id type now (SGLang sends int32): the batches held until written are a quarter of the size.
    experts_TLK = experts_TLK.astype(expert_dtype(plan.num_experts), copy=False)
    pos = np.arange(T, dtype=np.int32)
    tok = r.token_ids[:T].astype(np.int32) if r.token_ids is not None and len(r.token_ids) >= T else None
    return RoutingBatch(
        experts_TLK=experts_TLK, seq_T=np.full(T, seq_id, dtype=np.int64), position_T=pos,
        phase_T=np.where(pos < P, PHASE_PREFILL, PHASE_DECODE).astype(np.int8), token_T=tok,
        domain_T=np.full(T, domain, dtype=np.int16) if domain is not None else None,
    )


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt: the block cannot be cut in half.

    Python raises KeyboardInterrupt in the main thread between any two bytecodes, so without this an interrupt
    could leave a sequence counted but not queued. Only where Python's own handler is installed and only in the
    main thread (signal handlers can be set nowhere else, and KeyboardInterrupt is raised nowhere else).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class RoutedSink:
    """Streams whole sequences to ``out``: the writer opens on the first sequence (when the layer plan is fixed);
    rows are gathered into batches of ``batch_tokens`` and handed to a writer thread (Parquet encoding releases
    the GIL, so it overlaps with receiving and decoding; at most two batches wait). ``close`` makes the file
    appear (atomically); ``abort`` leaves the output path as it was.

    ``make_meta(plan)`` builds the trace metadata once the plan is fixed.
    """

    def __init__(self, out: Path, plan: LayerPlan, make_meta: Callable[[LayerPlan], TraceMeta],
                 with_domain: bool = False, batch_tokens: int = 16384) -> None:
        self.out, self.plan, self.make_meta = out, plan, make_meta
        self.with_domain, self.batch_tokens = with_domain, batch_tokens
        self.counts = SinkCounts()
        self.meta: TraceMeta | None = None
        self._writer: TraceWriter | None = None
        self._pending: list[RoutingBatch] = []
        self._pending_tokens = 0
        self._queue: "queue.Queue[RoutingBatch | None]" = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, batch: RoutingBatch) -> None:
        """Count and queue one whole sequence. Atomic for Ctrl-C: an interrupt that arrives meanwhile is raised
        when the sequence is in (see ``sigint_deferred``), so an interrupted trace keeps every sequence added."""
        with sigint_deferred():
            self._add(batch)

    def _add(self, batch: RoutingBatch) -> None:
        if self._writer is None:
            self.meta = self.make_meta(self.plan)
            # No stack returns gate weights: the trace leaves the column out (read back as 1/K).
            self._writer = TraceWriter(self.out, self.meta, with_token_id=True, with_domain=self.with_domain,
                                       with_weights=False, row_group_size=self.batch_tokens)
            self._thread = threading.Thread(target=self._write_loop, name="moeplace-trace-writer", daemon=True)
            self._thread.start()
        n = len(batch)
        decode = int(np.count_nonzero(batch.phase_T))
        self.counts.sequences += 1
        self.counts.decode_tokens += decode
        self.counts.prefill_tokens += n - decode
        self._pending.append(batch)
        self._pending_tokens += n
        if self._pending_tokens >= self.batch_tokens:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._error is not None:
            raise self._error
        if self._pending:
            parts, self._pending, self._pending_tokens = self._pending, [], 0
            self._queue.put(concat_batches(parts))

    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self._error is None:
                try:
                    self._writer.write(batch)
                except BaseException as exc:  # reported by the main thread at its next hand-over or close
                    self._error = exc

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def close(self, final_extra: dict | None = None) -> Path | None:
        """Write what is pending and move the trace into place (``final_extra``: see ``TraceWriter.close``);
        None when no sequence arrived."""
        if self._writer is None:
            return None
        try:
            self._hand_over()
            self._stop_thread()
            if self._error is not None:
                raise self._error
        except BaseException:
            self.abort()
            raise
        path = self._writer.close(final_extra)
        self.meta = self._writer.meta
        return path

    def abort(self) -> None:
        if self._writer is not None:
            self._error = self._error or RuntimeError("aborted")
            with contextlib.suppress(queue.Empty):
                while True:  # drop what waits, so that the thread sees the end quickly
                    self._queue.get_nowait()
            self._stop_thread()
            self._writer.abort()


def concat_batches(parts: list[RoutingBatch]) -> RoutingBatch:
    """One batch of the rows of ``parts``; an optional column is kept only when every part has it."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str):
        vals = [getattr(p, name) for p in parts]
        return None if any(v is None for v in vals) else np.concatenate(vals)

    return RoutingBatch(
        experts_TLK=np.concatenate([p.experts_TLK for p in parts]), seq_T=cat("seq_T"), position_T=cat("position_T"),
        phase_T=cat("phase_T"), token_T=cat("token_T"), domain_T=cat("domain_T"),
    )
