"""Trace a running server: send JSONL prompts to an OpenAI-compatible server that returns routed experts.

``trace_server`` is the whole ``moeplace trace --server`` job without the CLI. ``concurrency`` worker threads,
each with its own keep-alive HTTP connection (standard library ``http.client``), take prompts from a queue and
send one greedy ``/v1/completions`` request per prompt with the engine's routing option. A worker decodes the
response (``placer.tracer.engines``) and retries what can succeed on a second try (connection errors, HTTP 408,
429 and 5xx, a malformed body, a response without routing once routing has been seen) up to ``retries`` times.
The main thread takes decoded sequences from a queue of ``concurrency`` places (so at most twice
``concurrency`` responses are held at once), checks them against the layer plan and streams whole sequences
into the trace (``placer.tracer.routing.RoutedSink``). With ``max_tokens`` the budget is spent in prompt order:
an answer waits until every earlier prompt's is in (workers stay within 2 x ``concurrency`` prompts of the
oldest unanswered one), so the trace does not depend on the order the answers come in.

A request that still fails is counted and named in the result; the trace holds complete sequences only. What
cannot get better by retrying stops the job with a one-line error and no output (exit code 2): a server that
returns no routing at all (capture off), a server that refuses the routing option, routing whose layers or
top-k change between responses, expert ids outside ``[0, E)``. Ctrl-C keeps the sequences already complete.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence
from urllib.parse import urlsplit

import numpy as np

from placer.core.errors import MoeplaceError, InputError, first_line, plain_text
from placer.core.trace.schema import TraceMeta
from placer.tracer.engines import BadResponse, Engine, NoRouting, Routed, ShapeMismatch, engine_for
from placer.tracer.routing import (
    LayerPlan, ModelShape, RoutedSink, SinkCounts, check_rows, read_model_shape, routed_rows,
)
from placer.tracer.text import DEFAULT_DOMAIN, PromptRecord, is_jsonl, read_prompt_records

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ServerOptions:
    """How to drive the server: engine, served model name, decode steps, requests in flight, retries."""

    url: str
    engine: str
    model: str | None = None
    generate: int = 0
    concurrency: int = 8
    retries: int = 2
    timeout_s: float = 600.0
    max_tokens: int | None = None
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        for name, v, lo in (("--generate", self.generate, 0), ("--concurrency", self.concurrency, 1),
                            ("--retries", self.retries, 0)):
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout must be positive, got {self.timeout_s}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Prompt:
    seq_id: int
    text: str
    domain: int | None
    where: str


@dataclass
class ServerTraceResult:
    path: Path | None
    meta: TraceMeta | None
    counts: SinkCounts
    requests: int
    failures: list[tuple[str, str]]
    over_budget: int
    wall_time_s: float
    server_version: str | None
    interrupted: bool = False
    max_held: int = 0
    cut: tuple[str, int, int] | None = None  # --max-tokens: (prompt, its tokens, tokens kept), prefill only


# -- HTTP --------------------------------------------------------------------------------------------------------
class Server:
    """An OpenAI-compatible server's address; ``connect()`` gives one keep-alive connection per thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        raw = url if "://" in url else f"http://{url}"
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--server: {url!r} is not an http(s) URL like http://localhost:8000")
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InputError(f"--server: {url!r} has an invalid port") from None
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.scheme, self.host = parts.scheme, parts.hostname
        # Users often give the OpenAI base URL (.../v1); the paths below start at the server's root.
        self.prefix = parts.path.rstrip("/").removesuffix("/v1")
        self.timeout_s = timeout_s

    def connect(self) -> "Connection":
        return Connection(self)


class _NoDelay:
    """Requests go out at once (no Nagle delay waiting for the server's delayed ACK)."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


class _HTTPConnection(_NoDelay, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_NoDelay, http.client.HTTPSConnection):
    pass


class Connection:
    def __init__(self, server: Server) -> None:
        self.server = server
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None
                ) -> tuple[int, bytes]:
        s = self.server
        if self._conn is None:
            cls = _HTTPSConnection if s.scheme == "https" else _HTTPConnection
            self._conn = cls(s.host, s.port, timeout=timeout_s or s.timeout_s)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            self._conn.request(method, s.prefix + path, body=data, headers=headers)
            resp = self._conn.getresponse()
            return resp.status, resp.read()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def _server_message(raw: bytes) -> str:
    """The error message of an error body ({"error": {"message"}} or {"message"} or text), first line."""
    text = plain_text(raw[:2000].decode("utf-8", errors="replace"))
    with contextlib.suppress(ValueError):
        obj = json.loads(text)
        if isinstance(obj, dict):
            err = obj.get("error")
            msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
            text = str(msg or obj.get("message") or obj.get("detail") or text)
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else "(empty body)"


def probe(server: Server, engine: Engine, model: str | None) -> tuple[str, str | None]:
    """(the served model name, the server's version or None), before any prompt is sent."""
    conn = server.connect()
    try:
        try:
            status, raw = conn.request("GET", "/v1/models", timeout_s=min(server.timeout_s, 30.0))
        except (OSError, http.client.HTTPException) as exc:
            raise InputError(f"{server.url}: cannot connect ({first_line(exc)}); is the server running?") from None
        names: list[str] = []
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            names = [str(m["id"]) for m in json.loads(raw)["data"] if isinstance(m, dict) and "id" in m]
        if model is None:
            if status != 200 or not names:
                raise InputError(f"{server.url}/v1/models gave no model name (HTTP {status}); give --model NAME")
            model = names[0]
        version = None
        for path in engine.version_paths:
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError, TypeError, AttributeError):
                st, body = conn.request("GET", path, timeout_s=min(server.timeout_s, 10.0))
                if st == 200 and json.loads(body).get("version"):
                    version = str(json.loads(body)["version"])
                    break
        return model, version
    finally:
        conn.close()


# -- one request, retried ----------------------------------------------------------------------------------------
@dataclass
class _Outcome:
    prompt: Prompt
    routed: Routed | None = None
    reason: str = ""
    fatal: bool = False  # retrying or other prompts cannot help: stop the job (exit code 2)


def _send(conn: Connection, engine: Engine, prompt: Prompt, model: str, opts: ServerOptions, plan_shape,
          routing_seen: threading.Event, stop: threading.Event) -> _Outcome:
    body = engine.request(prompt.text, model, opts.generate + 1)  # the last generated token is never forwarded
    reason = ""
    for attempt in range(opts.retries + 1):
        if attempt:
            if stop.wait(min(opts.backoff_s * 2 ** (attempt - 1), 10.0)):
                break
        try:
            status, raw = conn.request("POST", engine.endpoint, body)
        except (OSError, http.client.HTTPException) as exc:
            reason = f"connection failed ({first_line(exc, 120)})"
            continue
        if status != 200:
            text = raw[:4000].decode("utf-8", errors="replace")
            refused = engine.refusal(status, text)
            if refused:
                return _Outcome(prompt, reason=refused, fatal=True)
            reason = f"HTTP {status}: {_server_message(raw)}"
            if status == 404 and not routing_seen.is_set():
                return _Outcome(prompt, reason=reason, fatal=True)  # wrong --model or endpoint: every prompt fails
            if status in RETRY_STATUS:
                continue
            return _Outcome(prompt, reason=reason)
        try:
            decoded = json.loads(raw)
        except ValueError:
            reason = "malformed body (not JSON)"
            continue
        try:
            routed = engine.extract(decoded, plan_shape)
            if len(routed) != 1:
                raise BadResponse(f"{len(routed)} routed sequences for one prompt")
            check_rows(routed[0])
        except NoRouting as exc:
            reason = f"no routing in the response ({exc})"
            if not routing_seen.is_set():
                return _Outcome(prompt, reason=f"{reason}; start the server with {engine.server_flag}", fatal=True)
            continue
        except ShapeMismatch as exc:
            return _Outcome(prompt, reason=str(exc), fatal=True)
        except BadResponse as exc:
            reason = f"malformed response: {exc}"
            continue
        routing_seen.set()
        return _Outcome(prompt, routed=routed[0])
    return _Outcome(prompt, reason=f"{reason} (after {opts.retries + 1} attempts)")


# -- the job -----------------------------------------------------------------------------------------------------
def load_prompts(texts: Sequence[str | Path], text_field: str | None, domain_field: str | None
                 ) -> tuple[list[Prompt], list[str], int]:
    """The prompts of every file in order (sequence ids 0, 1, ...), the domain names (code = index) and how many
    prompts lack the domain field (their domain is ``DEFAULT_DOMAIN``)."""
    if not texts:
        raise InputError("--text: give at least one JSONL prompt file")
    prompts: list[Prompt] = []
    names: dict[str, int] = {}
    without = 0
    for path in texts:
        if not is_jsonl(Path(path), text_field):
            raise InputError(f"{path}: --server sends JSONL prompts, one request each (a .jsonl file, or "
                             f"--text-field NAME); plain text is cut into pieces by the local tracer only")
        recs: list[PromptRecord] = read_prompt_records(path, text_field, domain_field)
        for r in recs:
            without += not r.domain_given
            code = names.setdefault(r.domain, len(names)) if r.domain is not None else None
            prompts.append(Prompt(len(prompts), r.text, code, f"{path}:{r.line}"))
    if len(names) > 32767:
        raise InputError(f"--domain-field {domain_field}: {len(names)} distinct domains; at most 32767 fit")
    return prompts, list(names), without


def trace_server(
    opts: ServerOptions,
    texts: Sequence[str | Path],
    out: str | Path,
    *,
    text_field: str | None = None,
    domain_field: str | None = None,
    model_config: str | Path | None = None,
    num_layers: int | None = None,
    top_k: int | None = None,
    num_experts: int | None = None,
    progress: Callable[[int], ContextManager[Callable[..., None]]] | None = None,
) -> ServerTraceResult:
    """Send every prompt, stream the returned routing into ``out`` (written atomically at the end)."""
    engine = engine_for(opts.engine)
    shape: ModelShape | None = read_model_shape(model_config) if model_config is not None else None
    plan = LayerPlan(engine, shape, num_layers, top_k, num_experts)
    prompts, domain_names, without_domain = load_prompts(texts, text_field, domain_field)
    server = Server(opts.url, opts.timeout_s)
    model, version = probe(server, engine, opts.model)

    def make_meta(p: LayerPlan) -> TraceMeta:
        return TraceMeta(
            num_layers=len(p.keep_X), num_experts=p.num_experts, top_k=p.top_k, model_name=model,
            model_family=(shape.model_type if shape and shape.model_type else "unknown"),
            moe_layer_indices=p.model_layers, source="moeplace trace --server",
            extra={
                "server": server.url, "engine": engine.name, "server_version": version, "served_model": model,
                "model_config": shape.path if shape else None, "layer_axis": engine.layer_axis,
                "wire_layers": p.wire_layers, "moe_layers_from": p.source, "weights_from_source": False,
                "generate": opts.generate, "concurrency": opts.concurrency, "retries": opts.retries,
                "max_tokens": opts.max_tokens, "text": [str(t) for t in texts], "text_field": text_field,
                "domain_field": domain_field, "domain_names": domain_names,
                "prompts_without_domain": without_domain if domain_field is not None else None,
                "domain_default": DEFAULT_DOMAIN if domain_field is not None else None,
            },
        )

    sink = RoutedSink(Path(out), plan, make_meta, with_domain=domain_field is not None)
    jobs: "queue.Queue[Prompt]" = queue.Queue()
    for p in prompts:
        jobs.put(p)
    results: "queue.Queue[_Outcome | None]" = queue.Queue(maxsize=opts.concurrency)
    stop, no_more, routing_seen = threading.Event(), threading.Event(), threading.Event()
    wire_shape = plan.wire_shape()  # fixed before the first request where the wire does not carry it
    # With --max-tokens the budget is spent in prompt order, whatever order the answers come in, so that the
    # trace does not depend on --concurrency or on the server's speed: answers wait in ``early`` until every
    # earlier prompt's has been taken, and ``window`` keeps workers from running more than 2 x concurrency
    # prompts ahead of the oldest unanswered one (memory stays bounded by the requests in flight).
    budget = opts.max_tokens
    window = threading.Semaphore(2 * opts.concurrency) if budget is not None else None

    def hand(item: _Outcome | None) -> None:
        while not stop.is_set():  # a stopped job takes nothing more: do not wait on a full queue forever
            with contextlib.suppress(queue.Full):
                results.put(item, timeout=0.2)
                return

    def may_take() -> bool:
        while window is not None and not window.acquire(timeout=0.2):
            if stop.is_set() or no_more.is_set():
                return False
        return not (stop.is_set() or no_more.is_set())

    def worker() -> None:
        conn = server.connect()
        try:
            while may_take():
                try:
                    prompt = jobs.get_nowait()
                except queue.Empty:
                    break
                hand(_send(conn, engine, prompt, model, opts, wire_shape, routing_seen, stop))
        finally:
            conn.close()
            hand(None)

    failures: list[tuple[str, str]] = []
    over_budget = 0
    cut: tuple[str, int, int] | None = None
    requests = 0
    max_held = 0
    interrupted = False
    early: dict[int, _Outcome] = {}
    next_seq = 0

    def take(item: _Outcome) -> None:
        """One answer, in prompt order under --max-tokens: its whole sequence, a cut one, or nothing."""
        nonlocal over_budget, cut
        if no_more.is_set() and budget is not None:
            over_budget += 1  # answered after the budget was spent: not traced
            return
        if item.routed is None:
            failures.append((item.prompt.where, item.reason))
            return
        batch = routed_rows(item.routed, plan, item.prompt.seq_id, item.prompt.domain,
                            f"{server.url} ({item.prompt.where})")
        if budget is not None:
            left, prefill = budget - sink.counts.prefill_tokens, int(item.routed.prompt_tokens)
            if prefill >= left:
                no_more.set()  # the budget is spent with this prompt: send nothing more
            if prefill > left:
                # As the local tracer cuts its last prompt: the first `left` prompt tokens are routed exactly as
                # a prompt of `left` tokens would be (attention is causal); the decode rows followed the whole
                # prompt, so they go.
                cut = (item.prompt.where, prefill, left)
                batch = batch.select(np.arange(left))
        sink.add(batch)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, name=f"moeplace-trace-{i}", daemon=True)
               for i in range(min(opts.concurrency, len(prompts)))]
    bar = progress(len(prompts)) if progress is not None else contextlib.nullcontext(lambda n, **kw: None)
    try:
        with bar as advance:
            for t in threads:
                t.start()
            running = len(threads)
            while running:
                try:
                    item = results.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    running -= 1
                    continue
                max_held = max(max_held, results.qsize() + 1 + len(early))
                requests += 1
                if item.fatal:
                    raise InputError(f"{server.url} ({engine.stack}, {item.prompt.where}): {item.reason}")
                if window is None:
                    take(item)
                else:
                    early[item.prompt.seq_id] = item
                    while next_seq in early:
                        take(early.pop(next_seq))
                        next_seq += 1
                        window.release()
                elapsed = max(time.perf_counter() - t0, 1e-9)
                advance(1, status=f"{sink.counts.tokens:,} tok, {sink.counts.tokens / elapsed:,.0f} tok/s, "
                                  f"{len(failures)} failed")
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
    except BaseException:
        stop.set()
        sink.abort()
        raise
    stop.set()
    if not interrupted:
        over_budget += jobs.qsize()  # prompts never sent once --max-tokens was reached
    # Known only now, so written at the close (the reader merges them into meta.extra): every failed request
    # (the summary names five), the prompt cut by --max-tokens, whether the run was interrupted.
    final = {"failed_requests": [{"prompt": where, "reason": reason} for where, reason in failures],
             "interrupted": interrupted,
             "max_tokens_cut": None if cut is None else {"prompt": cut[0], "prompt_tokens": cut[1], "kept": cut[2]}}
    path = sink.close(final)  # an interrupt never lands inside sink.add (it waits for the sequence to be in)
    if path is None and not interrupted:
        first = f": {failures[0][0]}: {failures[0][1]}" if failures else ""
        raise MoeplaceError(f"{server.url}: no request returned routing ({len(failures)} failed){first}")
    return ServerTraceResult(path, sink.meta, sink.counts, requests, failures, over_budget,
                             time.perf_counter() - t0, version, interrupted, max_held, cut)


def describe_failures(failures: list[tuple[str, str]], limit: int = 5) -> list[str]:
    """One line per failed request (``where: reason``), the first ``limit`` of them and a count of the rest
    (every one is in the trace's metadata, ``extra.failed_requests``)."""
    lines = [f"{w}: {r}" for w, r in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"... and {len(failures) - limit} more (all {len(failures)} in the trace's metadata: "
                     f"extra.failed_requests)")
    return lines


def as_dict(res: ServerTraceResult) -> dict[str, Any]:
    return {"path": str(res.path) if res.path else None, "sequences": res.counts.sequences,
            "prefill_tokens": res.counts.prefill_tokens, "decode_tokens": res.counts.decode_tokens,
            "requests": res.requests, "failed": len(res.failures), "over_budget": res.over_budget,
            "wall_time_s": round(res.wall_time_s, 3), "server_version": res.server_version,
            "interrupted": res.interrupted}
