"""What every serving stack's routing answer is turned into, and the failures a response can have.

An engine module knows one stack's wire format: the request body that asks for routing, where the answer sits
in the response, how it is encoded and which layers its layer axis counts. It returns ``Routed`` sequences; the
rest of moeplace (``placer.tracer.routing``) never looks at a stack's JSON.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


class NoRouting(Exception):
    """The response is well formed but carries no routing (the stack's capture option is off)."""


class BadResponse(Exception):
    """The response body is malformed: not JSON, a field missing, routing that does not decode."""


@dataclass
class Routed:
    """The routing of one sequence as a stack returned it.

    experts_TXK: [T, X, K] expert ids of every token with routing, X layers counted as the stack counts them
        (every decoder layer for vLLM and SGLang, MoE layers only for TensorRT-LLM), T = prompt + generated - 1
        (no stack runs the last generated token through the model).
    prompt_tokens: tokens of the prompt; rows [0, prompt_tokens) are prefill, the rest decode.
    completion_tokens: generated tokens (the response's usage), or None when unknown.
    token_ids: [prompt + generated] token ids when the response listed them, else None.
    """

    experts_TXK: np.ndarray
    prompt_tokens: int
    completion_tokens: int | None = None
    token_ids: np.ndarray | None = None


@dataclass(frozen=True)
class WireShape:
    """Layers and top-k of a stack's routing array where the response does not carry them (SGLang)."""

    layers: int
    top_k: int


class Engine:
    """One serving stack: its request, its response field, its layer axis. Subclasses set the class attributes
    and implement ``extract``; the docstring of each engine module cites the release and files it follows."""

    name = ""
    stack = ""
    #: "decoder": the layer axis counts every decoder layer (dense ones hold zeros); "moe": MoE layers only.
    layer_axis = "decoder"
    #: the response carries the routing array's shape (an .npy header), so --num-layers/--top-k are not needed.
    shape_on_wire = True
    #: how the server is started so that it returns routing.
    server_flag = ""
    endpoint = "/v1/completions"
    #: GET paths that report the server's version, tried in order; each answers JSON with a "version" key.
    version_paths: Sequence[str] = ("/version",)

    def request(self, prompt: str, model: str, max_new_tokens: int) -> dict[str, Any]:
        """The /v1/completions body for one prompt, greedy, asking for routing and token ids."""
        return {"model": model, "prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0.0,
                "stream": False}

    def extract(self, body: Any, shape: WireShape | None) -> list[Routed]:
        """Every sequence's routing in one response body (one per choice); raises NoRouting or BadResponse."""
        raise NotImplementedError

    def refusal(self, status: int, text: str) -> str | None:
        """A one-line reason when an HTTP error means the server cannot return routing at all, else None."""
        if status in (400, 422) and "return_routed_experts" in text:
            return f"the server refuses the option 'return_routed_experts' (HTTP {status}); start it with {self.server_flag}"
        return None


# -- helpers shared by the engine modules ---------------------------------------------------------------------
def b64_bytes(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise BadResponse(f"field '{field}' is {type(value).__name__}, expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadResponse(f"field '{field}' is not valid base64") from None


# The header numpy's np.save writes (numpy/lib/format.py), e.g. {'descr': '|u1', 'fortran_order': False, 'shape': (9, 61, 8), }
_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=][iu][1248])', 'fortran_order': False, 'shape': \((\d+), (\d+), (\d+)\), \}")


def npy_array(raw: bytes, field: str) -> np.ndarray:
    """An ``.npy`` byte stream (``np.save``) as an array; never unpickles. The usual header (C order, integer
    dtype, three dimensions) is read directly, ``np.load`` (whose header parser is slow) reads any other."""
    if raw[:6] != b"\x93NUMPY":
        raise BadResponse(f"field '{field}' is not an .npy array (no NUMPY magic)")
    if len(raw) > 10:
        start = 10 if raw[6] == 1 else 12
        hlen = int.from_bytes(raw[8:start], "little")
        m = _NPY_HEADER.match(raw[start:start + hlen])
        if m:
            dtype = np.dtype(m.group(1).decode())
            shape = tuple(int(g) for g in m.groups()[1:])
            count = shape[0] * shape[1] * shape[2]
            if len(raw) - start - hlen != count * dtype.itemsize:
                raise BadResponse(f"field '{field}' is an .npy of shape {list(shape)} whose data is "
                                  f"{len(raw) - start - hlen} bytes, expected {count * dtype.itemsize}")
            return np.frombuffer(raw, dtype=dtype, count=count, offset=start + hlen).reshape(shape)
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadResponse(f"field '{field}' is not an .npy array ({str(exc)[:80]})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 3 or not np.issubdtype(arr.dtype, np.integer):
        shape = getattr(arr, "shape", "?")
        raise BadResponse(f"field '{field}' holds an array of shape {shape} and type {getattr(arr, 'dtype', '?')}, "
                          f"expected integers [tokens, layers, top_k]")
    return arr


def field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise BadResponse(f"no field '{where}{key}'")
    return obj[key]


def int_field(obj: Any, key: str, where: str) -> int:
    value = field(obj, key, where)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadResponse(f"field '{where}{key}' is {value!r}, expected a non-negative integer")
    return value


def id_list(value: Any) -> np.ndarray | None:
    """A JSON list of token ids as int64, or None when absent or not a flat list of integers."""
    if not isinstance(value, list):
        return None
    if not value:
        return np.zeros(0, dtype=np.int64)
    try:  # one C pass; a per-element isinstance() check cost more than decoding the routing
        arr = np.asarray(value)
    except (ValueError, OverflowError):  # ragged nesting
        return None
    return arr if arr.ndim == 1 and arr.dtype == np.int64 else None  # not bools, floats, strings, nested, >int64


def token_ids(prompt_ids: np.ndarray | None, output_ids: np.ndarray | None) -> np.ndarray | None:
    if prompt_ids is None or output_ids is None:
        return None
    return np.concatenate([prompt_ids, output_ids])
