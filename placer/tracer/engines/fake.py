"""Local stand-ins for vLLM, SGLang and TensorRT-LLM servers that answer routing requests as each stack does.

Used by the tests and by ``moeplace bench server-trace``: no model runs, but every request is validated, and
every response is built, the way the stack's code builds it (field names, encodings, shapes, error bodies; the
engine modules ``vllm.py``, ``sglang.py``, ``trtllm.py`` cite the release and files):

- vLLM 0.33.0: ``choices[0].routed_experts`` = base64 of ``np.save`` of ``[prompt + generated - 1,
  num_hidden_layers, top_k]`` (uint8 up to 256 experts, else uint16; dense layers zeros), ``null`` without
  ``--enable-return-routed-experts``; errors ``{"error": {"message", "type", "param", "code"}}``; an unknown
  model name is HTTP 404 ("The model `x` does not exist.").
- SGLang 0.5.23: ``sglext.routed_experts`` = base64 of flat int32 without a shape, only when the server has the
  flag *and* the request says ``"return_routed_experts": true``; no ``sglext`` key otherwise; errors
  ``{"object": "error", "message", "type", "param", "code"}``; ``max_tokens`` must be positive.
- TensorRT-LLM (main branch, tensorrt_llm/serve/openai_protocol.py at commit 0076e939): unknown request fields
  are forbidden, so a request with ``return_routed_experts`` is HTTP 400; nothing on the wire carries routing.

A fake "model": a prompt's tokens are its whitespace-separated words; it generates ``max_tokens`` tokens
(fewer when the prompt holds ``<eos:N>``). Routing is drawn from the prompt's CRC (K distinct experts per token
and MoE layer) and kept in ``served[prompt]`` (``ServedRouting``: MoE layers only) so tests compare traces with
what was served. Markers in a prompt script failures, counted per prompt text:

``[fail:N]`` the first N attempts answer HTTP 500; ``[malformed:N]`` the first N answer a truncated body;
``[norouting:N]`` the first N answer without routing; ``[slow:S]`` every answer waits S seconds;
``[badid]`` one expert id equals E; ``[topk+1]`` the routing has one more expert per token.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

VOCAB = 32000


@dataclass(frozen=True)
class FakeModel:
    """The served model's routing shape: decoder layers, which are MoE layers, experts, top-k."""

    name: str = "fake/moe"
    num_hidden_layers: int = 6
    moe_layers: tuple[int, ...] = (1, 2, 3, 4, 5)
    num_experts: int = 16
    top_k: int = 2

    def config(self) -> dict[str, Any]:
        """A DeepSeek-style config.json for this shape (first_k_dense_replace = the first MoE layer)."""
        first = self.moe_layers[0]
        assert self.moe_layers == tuple(range(first, self.num_hidden_layers)), "config() needs trailing MoE layers"
        return {"model_type": "deepseek_v3", "num_hidden_layers": self.num_hidden_layers,
                "first_k_dense_replace": first, "moe_layer_freq": 1, "n_routed_experts": self.num_experts,
                "num_experts_per_tok": self.top_k}


@dataclass
class ServedRouting:
    experts_TLK: np.ndarray  # MoE layers only, as the stack computed them
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]


def _marker(prompt: str, name: str) -> float | None:
    m = re.search(rf"\[{re.escape(name)}(?::([0-9.]+))?\]", prompt)
    if not m:
        return None
    return float(m.group(1)) if m.group(1) else 1.0


def fake_routing(prompt: str, rows: int, model: FakeModel, seed: int = 0) -> np.ndarray:
    """[rows, L, K] distinct experts per token and layer, a function of the prompt's text."""
    L, E, K = len(model.moe_layers), model.num_experts, model.top_k
    rng = np.random.default_rng(zlib.crc32(prompt.encode()) ^ seed)
    start = rng.integers(0, E, size=(rows, L, 1))
    if K == 1:
        return start
    # K-1 positive gaps whose sum stays below E: the K ids are distinct modulo E.
    gaps = rng.integers(1, max((E - 1) // (K - 1), 1) + 1, size=(rows, L, K - 1))
    return (start + np.concatenate([np.zeros((rows, L, 1), np.int64), np.cumsum(gaps, axis=2)], axis=2)) % E


class FakeServer:
    """A threaded HTTP server in this process speaking ``engine``'s dialect; use as a context manager.

    ``capture``: the server was started with its return-routed-experts flag. ``url`` is its address.
    """

    def __init__(self, engine: str, model: FakeModel = FakeModel(), *, capture: bool = True, seed: int = 0,
                 version: str | None = None, record: bool = True, reuse: bool = False, port: int = 0) -> None:
        if engine not in ("vllm", "sglang", "trtllm"):
            raise ValueError(f"unknown engine {engine!r}")
        self.engine, self.model, self.capture, self.seed, self.record = engine, model, capture, seed, record
        # Benchmarks: 64 routings per row count, encoded once, so that the server costs little and the trace
        # still holds more variety than a compressor's window.
        self.reuse = reuse
        self._cache: dict[tuple[int, int], str] = {}
        self.version = version or {"vllm": "0.33.0", "sglang": "0.5.23", "trtllm": None}[engine]
        self.served: dict[str, ServedRouting] = {}
        self.attempts: dict[str, int] = {}
        self.requests = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "FakeServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- the stack's answers ---------------------------------------------------------------------------------
    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "GET":
            return self._get(path)
        if path != "/v1/completions":
            return self._error(404, "Not Found", "NotFoundError")
        try:
            req = json.loads(body)
        except ValueError:
            return self._error(400, "Invalid JSON body", "BadRequestError")
        if not isinstance(req, dict):
            return self._error(400, "Request body must be an object", "BadRequestError")
        return self._complete(req)

    def _get(self, path: str) -> tuple[int, bytes]:
        if path == "/v1/models":
            card = {"id": self.model.name, "object": "model", "created": 0, "owned_by": self.engine}
            return 200, json.dumps({"object": "list", "data": [card]}).encode()
        if self.engine == "vllm" and path == "/version":
            return 200, json.dumps({"version": self.version}).encode()
        if self.engine == "sglang" and path in ("/server_info", "/get_server_info"):
            return 200, json.dumps({"version": self.version, "enable_return_routed_experts": self.capture}).encode()
        return self._error(404, "Not Found", "NotFoundError")

    def _error(self, status: int, message: str, kind: str, param: str | None = None) -> tuple[int, bytes]:
        if self.engine == "vllm":  # vllm/entrypoints/serve/engine/protocol.py: ErrorResponse(error=ErrorInfo)
            body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        else:  # SGLang serving_base.create_error_response; TensorRT-LLM ErrorResponse
            body = {"object": "error", "message": message, "type": kind, "param": param, "code": status}
        return status, json.dumps(body).encode()

    def _complete(self, req: dict[str, Any]) -> tuple[int, bytes]:
        m = self.model
        if self.engine == "trtllm":
            allowed = {"model", "prompt", "max_tokens", "temperature", "stream", "top_p", "n", "stop", "seed",
                       "ignore_eos", "return_context_logits", "add_special_tokens"}
            extra = sorted(set(req) - allowed)
            if extra:
                errs = [{"type": "extra_forbidden", "loc": ["body", k], "msg": "Extra inputs are not permitted"}
                        for k in extra]
                return self._error(400, str(errs), "BadRequestError")
        model = req.get("model")
        if self.engine == "vllm" and model is not None and model != m.name:
            return self._error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        prompt = req.get("prompt")
        if not isinstance(prompt, str):
            return self._error(400, "field 'prompt' must be a string here", "BadRequestError", "prompt")
        max_tokens = req.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            msg = "max_tokens must be positive" if self.engine == "sglang" else "max_tokens must be at least 1"
            return self._error(400, msg, "BadRequestError", "max_tokens")
        with self._lock:
            self.requests += 1
            attempt = self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
        slow = _marker(prompt, "slow")
        if slow:
            time.sleep(slow)
        fail = _marker(prompt, "fail")
        if fail and attempt <= fail:
            return self._error(500, "Internal server error (fake)", "InternalServerError")

        words = prompt.split() or [""]
        prompt_ids = [zlib.crc32(w.encode()) % VOCAB for w in words]
        P = len(prompt_ids)
        eos = _marker(prompt, "eos")
        C = min(max_tokens, int(eos)) if eos else max_tokens
        rows = P + C - 1  # the last generated token is never forwarded
        key = (rows, zlib.crc32(prompt.encode()) % 64)
        if self.reuse and self.capture and key in self._cache:
            return 200, json.dumps(self._body(req, prompt_ids, [0] * C, self._cache[key],
                                              finish="stop" if C < max_tokens else "length")).encode()
        output_ids = [(zlib.crc32(prompt.encode()) + i) % VOCAB for i in range(C)]
        experts_TLK = fake_routing(prompt, rows, m, self.seed)
        if _marker(prompt, "badid") and rows:
            experts_TLK[rows // 2, 0, 0] = m.num_experts
        K = m.top_k + (1 if _marker(prompt, "topk+1") else 0)
        if K != m.top_k:
            experts_TLK = np.concatenate([experts_TLK, experts_TLK[:, :, :1]], axis=2)
        with_routing = self.capture and not ((nr := _marker(prompt, "norouting")) and attempt <= nr)
        if self.engine == "sglang":
            with_routing = with_routing and req.get("return_routed_experts") is True
        if with_routing and self.record:
            with self._lock:
                self.served[prompt] = ServedRouting(experts_TLK, P, C, prompt_ids + output_ids)
        wire = None
        if with_routing:
            dtype = (np.uint8 if m.num_experts <= 256 else np.uint16) if self.engine == "vllm" else np.int32
            full = np.zeros((rows, m.num_hidden_layers, K), dtype=dtype)  # dense layers stay zeros
            full[:, list(m.moe_layers), :] = experts_TLK
            if self.engine == "vllm":
                buf = io.BytesIO()
                np.save(buf, full, allow_pickle=False)
                wire = base64.b64encode(buf.getvalue()).decode("ascii")
            else:
                wire = base64.b64encode(full.tobytes()).decode("utf-8")
            if self.reuse:
                self._cache[key] = wire
        body = self._body(req, prompt_ids, output_ids, wire, finish="stop" if C < max_tokens else "length")
        raw = json.dumps(body).encode()
        malformed = _marker(prompt, "malformed")
        if malformed and attempt <= malformed:
            raw = raw[: len(raw) // 2]
        return 200, raw

    def _body(self, req: dict[str, Any], prompt_ids: list[int], output_ids: list[int], wire: str | None,
              finish: str) -> dict[str, Any]:
        usage = {"prompt_tokens": len(prompt_ids), "total_tokens": len(prompt_ids) + len(output_ids),
                 "completion_tokens": len(output_ids), "prompt_tokens_details": None}
        want_ids = bool(req.get("return_token_ids"))
        choice: dict[str, Any] = {"index": 0, "text": " ".join(f"t{t}" for t in output_ids), "logprobs": None,
                                  "finish_reason": finish}
        body: dict[str, Any] = {"id": f"cmpl-{self.requests}", "object": "text_completion", "created": 0,
                                "model": str(req.get("model") or self.model.name), "choices": [choice], "usage": usage}
        if self.engine == "vllm":  # CompletionResponseChoice: every field serialised, None as null
            choice.update({"stop_reason": None, "prompt_logprobs": None,
                           "prompt_token_ids": prompt_ids if want_ids else None,
                           "token_ids": output_ids if want_ids else None, "routed_experts": wire,
                           "weight_versions": None})
            body.update({"service_tier": None, "system_fingerprint": None, "kv_transfer_params": None,
                         "ec_transfer_params": None, "metrics": None})
        elif self.engine == "sglang":  # None fields popped by the model serializers
            choice["matched_stop"] = None
            if want_ids:
                choice["token_ids"], choice["prompt_token_ids"] = output_ids, prompt_ids
            usage["reasoning_tokens"] = 0
            body["metadata"] = {"weight_version": "default"}
            if wire is not None:
                body["sglext"] = {"routed_experts": wire}
        return body


def _handler(fake: FakeServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports

        def _reply(self, status: int, raw: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:  # noqa: N802 (http.server's names)
            self._reply(*fake.answer("GET", self.path, b""))

        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("Content-Length") or 0)
            self._reply(*fake.answer("POST", self.path, self.rfile.read(n)))

        def log_message(self, *args) -> None:
            pass

    return Handler


def serve_forever(engine: str, model: FakeModel, conn, seed: int = 0) -> None:
    """Run a fake server in this (child) process and send its URL through ``conn`` (bench: own core)."""
    with FakeServer(engine, model, seed=seed, record=False, reuse=True) as srv:
        conn.send(srv.url)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
