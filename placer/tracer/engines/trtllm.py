"""TensorRT-LLM: router replay capture (``CompletionOutput.routed_experts`` of the LLM API), not served over HTTP.

No TensorRT-LLM release could be read here: the ``tensorrt_llm`` 1.2.1 package on PyPI is a source stub that
downloads the wheel from NVIDIA's index at install time. What follows is read from the stored copy of the
NVIDIA/TensorRT-LLM repository (main branch, not a release; commit noted per file):

- ``tensorrt_llm/_torch/route_capture.py`` (commit 06a976ce, merged with PR #18397 "Router Replay (R3)"): engine
  switch ``LlmArgs.enable_return_routed_experts`` plus per-request ``SamplingParams.return_routed_experts``;
  the routes are captured right after ``routing_method.apply()``, before the EPLB load balancer (logical ids);
  ``assemble`` returns an int16 tensor ``[prompt + generated - 1, num_moe_layers, top_k]`` whose layer axis
  is the MoE layers only, in increasing decoder-layer order (``_layer_pos`` over the sorted ``moe_layers``);
  a gap raises ("fail-closed"), -1 marks a missing route. It surfaces on ``CompletionOutput.routed_experts``.
  Prefix caching is covered by a position-keyed ``SharedRouteCache``; pipeline parallelism and speculative
  decoding are refused at start (``RouteCapture.create`` raises).
- ``tensorrt_llm/serve/openai_protocol.py`` (commit 0076e939): the OpenAI server's ``CompletionRequest`` has no
  ``return_routed_experts`` field and forbids unknown ones (``OpenAIBaseModel``: ``extra="forbid"``), and no
  response choice has a ``routed_experts`` field. ``trtllm-serve`` therefore answers such a request with HTTP 400
  and cannot return routing; moeplace says so instead of tracing. Use the LLM API and ``moeplace import
  --format trtllm-routed`` (docs/server-trace.md).
"""

from __future__ import annotations

from typing import Any

from placer.tracer.engines.base import Engine, NoRouting, Routed, WireShape


class TRTLLM(Engine):
    name = "trtllm"
    stack = "TensorRT-LLM"
    layer_axis = "moe"
    shape_on_wire = True
    server_flag = "LLM(..., enable_return_routed_experts=True) with SamplingParams(return_routed_experts=True)"
    version_paths = ("/version",)
    NO_HTTP = ("TensorRT-LLM's OpenAI server has no field for routed experts (tensorrt_llm/serve/openai_protocol.py); "
               "capture with the LLM API (enable_return_routed_experts) and use `moeplace import --format "
               "trtllm-routed` (docs/server-trace.md)")

    def request(self, prompt: str, model: str, max_new_tokens: int) -> dict[str, Any]:
        body = super().request(prompt, model, max_new_tokens)
        body["return_routed_experts"] = True
        return body

    def extract(self, body: Any, shape: WireShape | None) -> list[Routed]:
        raise NoRouting(self.NO_HTTP)

    def refusal(self, status: int, text: str) -> str | None:
        if status in (400, 422) and "return_routed_experts" in text:
            return f"the server refuses the option 'return_routed_experts' (HTTP {status}): {self.NO_HTTP}"
        return None
