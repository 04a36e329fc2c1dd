"""The wire formats of each stack's routing, built by hand as the stack's code builds them, decoded by moeplace.

Sources (docs/server-trace.md has the full list):
- vLLM 0.33.0: vllm/utils/serial_utils.py ``numpy2base64`` (base64 of ``np.save``), vllm/entrypoints/openai/
  completion/protocol.py ``CompletionResponseChoice.routed_experts`` (``null`` when capture is off), vllm/
  model_executor/layers/fused_moe/routed_experts_capturer.py (uint8 up to 256 experts, else uint16; the layer
  axis is every decoder layer).
- SGLang 0.5.23: sglang/srt/managers/detokenizer_manager.py ``_b64_encode_per_request`` (base64 of int32
  ``tobytes()``, no shape), sglang/srt/entrypoints/openai/serving_completions.py (``sglext.routed_experts`` of
  the first prompt), sglang/srt/state_capturer/base.py ``get_topk`` (rows ``[start_len, seqlen - 1)``).
- TensorRT-LLM (NVIDIA/TensorRT-LLM main branch, no release; the commits placer/tracer/engines/trtllm.py and
  docs/server-trace.md name): tensorrt_llm/serve/openai_protocol.py at commit 0076e939 (``extra="forbid"``, no
  routed-experts field).
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from placer.tracer.engines import ENGINES, BadResponse, NoRouting, ShapeMismatch, WireShape
from placer.tracer.engines.base import npy_array
from placer.tracer.engines.fake import FakeModel, FakeServer
from placer.tracer.routing import moe_layer_indices

# Token 0..2 of a 2-token prompt + 2 generated tokens (rows = 2 + 2 - 1 = 3), 3 decoder layers (layer 0 dense),
# top-2 of 300 experts.
ROUTES_TXK = np.array([[[0, 0], [5, 299], [7, 1]],
                       [[0, 0], [6, 2], [8, 3]],
                       [[0, 0], [4, 9], [290, 10]]])


def vllm_body(routes: np.ndarray | None, prompt_ids=(11, 12), output_ids=(13, 14)) -> dict:
    wire = None
    if routes is not None:
        buf = io.BytesIO()
        np.save(buf, routes, allow_pickle=False)  # numpy2base64
        wire = base64.b64encode(buf.getvalue()).decode("ascii")
    choice = {"index": 0, "text": "ab", "logprobs": None, "finish_reason": "length", "stop_reason": None,
              "prompt_logprobs": None, "prompt_token_ids": list(prompt_ids), "token_ids": list(output_ids),
              "routed_experts": wire}
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": len(prompt_ids), "total_tokens": 4, "completion_tokens": len(output_ids)}}


def test_vllm_npy_base64_uint16_beyond_256_experts():
    routes = ROUTES_TXK.astype(np.uint16)  # 300 experts: uint16, as RoutedExpertsCapturer.output_dtype_name
    (r,) = ENGINES["vllm"].extract(vllm_body(routes), None)
    np.testing.assert_array_equal(r.experts_TXK, ROUTES_TXK)
    assert r.experts_TXK.dtype == np.uint16 and r.prompt_tokens == 2 and r.completion_tokens == 2
    np.testing.assert_array_equal(r.token_ids, [11, 12, 13, 14])


def test_vllm_without_token_ids_uses_usage_and_null_is_no_routing():
    body = vllm_body(ROUTES_TXK.astype(np.uint16))
    body["choices"][0]["prompt_token_ids"] = body["choices"][0]["token_ids"] = None
    (r,) = ENGINES["vllm"].extract(body, None)
    assert r.prompt_tokens == 2 and r.completion_tokens == 2 and r.token_ids is None
    with pytest.raises(NoRouting, match="null"):
        ENGINES["vllm"].extract(vllm_body(None), None)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b["choices"][0].update(routed_experts="not base64!"), "not valid base64"),
    (lambda b: b["choices"][0].update(routed_experts=base64.b64encode(b"xyz").decode()), "no NUMPY magic"),
    (lambda b: b.update(choices=[]), "choices"),
])
def test_vllm_malformed_bodies(damage, match):
    body = vllm_body(ROUTES_TXK.astype(np.uint16))
    damage(body)
    with pytest.raises(BadResponse, match=match):
        ENGINES["vllm"].extract(body, None)


@pytest.mark.parametrize("arr", [np.arange(2 * 61 * 8, dtype=np.uint8).reshape(2, 61, 8),
                                 np.arange(24, dtype=">i4").reshape(2, 3, 4),
                                 np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)),
                                 np.zeros((0, 4, 2), np.uint8)])
def test_npy_fast_header_reads_what_np_save_writes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    got = npy_array(buf.getvalue(), "f")
    np.testing.assert_array_equal(got, arr)
    assert got.dtype == arr.dtype


def test_npy_with_missing_data_is_malformed():
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 4, 2), np.uint8))
    with pytest.raises(BadResponse, match="data is 23 bytes, expected 24"):
        npy_array(buf.getvalue()[:-1], "f")


def sglang_body(routes: np.ndarray | None) -> dict:
    body = {"id": "x", "object": "text_completion", "created": 0, "model": "default",
            "choices": [{"index": 0, "text": "ab", "logprobs": None, "finish_reason": "length", "matched_stop": None,
                         "token_ids": [13, 14], "prompt_token_ids": [11, 12]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 4, "completion_tokens": 2}}
    if routes is not None:  # detokenizer: base64 of the int32 tensor's raw bytes
        body["sglext"] = {"routed_experts": base64.b64encode(routes.astype(np.int32).tobytes()).decode("utf-8")}
    return body


def test_sglang_flat_int32_needs_the_shape():
    (r,) = ENGINES["sglang"].extract(sglang_body(ROUTES_TXK), WireShape(3, 2))
    np.testing.assert_array_equal(r.experts_TXK, ROUTES_TXK)
    np.testing.assert_array_equal(r.token_ids, [11, 12, 13, 14])
    with pytest.raises(ShapeMismatch, match="--num-layers 2 x --top-k 2"):
        ENGINES["sglang"].extract(sglang_body(ROUTES_TXK), WireShape(2, 2))  # 18 values = 4.5 rows
    with pytest.raises(ShapeMismatch, match="2 prompt \\+ 2 generated - 1 = 3"):
        ENGINES["sglang"].extract(sglang_body(ROUTES_TXK), WireShape(1, 2))  # 18 values = 9 rows, not 3
    with pytest.raises(NoRouting, match="sglext.routed_experts"):
        ENGINES["sglang"].extract(sglang_body(None), WireShape(3, 2))


def test_sglang_native_generate_body():
    raw = base64.b64encode(ROUTES_TXK.astype(np.int32).tobytes()).decode()
    body = {"text": "ab", "output_ids": [13, 14],
            "meta_info": {"prompt_tokens": 2, "completion_tokens": 2, "routed_experts": raw}}
    (r,) = ENGINES["sglang"].extract([body], WireShape(3, 2))
    np.testing.assert_array_equal(r.experts_TXK, ROUTES_TXK)
    assert r.prompt_tokens == 2


def test_trtllm_refusal_is_explained():
    reason = ENGINES["trtllm"].refusal(400, "[{'type': 'extra_forbidden', 'loc': ['body', 'return_routed_experts']}]")
    assert reason and "trtllm-routed" in reason
    assert ENGINES["trtllm"].refusal(500, "boom") is None


def test_fake_servers_validate_requests_as_the_stacks_do():
    model = FakeModel()
    with FakeServer("vllm", model) as v, FakeServer("sglang", model) as s, FakeServer("trtllm", model) as t:
        st, raw = v.answer("POST", "/v1/completions", json.dumps({"model": "other", "prompt": "a"}).encode())
        assert st == 404 and json.loads(raw)["error"]["message"] == "The model `other` does not exist."
        st, raw = s.answer("POST", "/v1/completions", json.dumps({"prompt": "a b", "max_tokens": 2}).encode())
        assert st == 200 and "sglext" not in json.loads(raw)  # no return_routed_experts in the request
        st, raw = s.answer("POST", "/v1/completions", json.dumps({"prompt": "a", "max_tokens": 0}).encode())
        assert st == 400 and json.loads(raw)["message"] == "max_tokens must be positive"
        st, raw = t.answer("POST", "/v1/completions",
                           json.dumps({"model": model.name, "prompt": "a", "return_routed_experts": True}).encode())
        assert st == 400 and "extra_forbidden" in json.loads(raw)["message"]


@pytest.mark.parametrize("cfg, n, expect", [
    ({"model_type": "deepseek_v3", "first_k_dense_replace": 3, "moe_layer_freq": 1}, 6, (3, 4, 5)),
    ({"model_type": "deepseek_v2", "first_k_dense_replace": 1, "moe_layer_freq": 2}, 6, (2, 4)),
    ({"model_type": "qwen2_moe", "decoder_sparse_step": 2, "mlp_only_layers": [3]}, 6, (1, 5)),
    ({"model_type": "qwen3_moe", "decoder_sparse_step": 1, "mlp_only_layers": []}, 3, (0, 1, 2)),
    ({"model_type": "mixtral"}, 4, (0, 1, 2, 3)),
])
def test_moe_layer_indices_follow_each_family(cfg, n, expect):
    assert moe_layer_indices(cfg, n) == expect
