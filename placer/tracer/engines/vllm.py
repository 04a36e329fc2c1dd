"""vLLM: routing in ``choices[i].routed_experts`` of its OpenAI-compatible responses.

Read from the vllm 0.33.0 wheel (PyPI), files under ``vllm/``:

- Server flag ``--enable-return-routed-experts`` (``engine/arg_utils.py``, ``config/aux_output.py``); there is no
  request option: with the flag every response carries routing, without it the field is ``null``
  (``entrypoints/openai/completion/protocol.py``, ``CompletionResponseChoice.routed_experts``). Extra request
  fields are accepted (``entrypoints/serve/engine/protocol.py``: ``extra="allow"``).
- Encoding: ``numpy2base64`` (``utils/serial_utils.py``) = base64 of ``np.save`` bytes, an ``.npy`` with its
  shape and dtype; ``entrypoints/openai/completion/serving.py`` and ``chat_completion/serving.py`` fill it for
  non-streaming responses only (the stream choices have no such field).
- Array: ``[prompt + generated - 1, num_hidden_layers, top_k]`` (``outputs.py``, protocol comment): the last
  sampled token is never forwarded. dtype uint8 when the model has at most 256 experts, else uint16
  (``model_executor/layers/fused_moe/routed_experts_capturer.py``). The layer axis is the decoder-layer index
  (``layer_id = extract_layer_index(layer_name)``, buffer sized by ``get_total_num_hidden_layers()``), so dense
  layers are rows of zeros that no router ever wrote.
- Ids are logical: captured at the router (``BaseRouter.set_capture_fn``), before EPLB's logical-to-physical map.
- Prefix caching: routing of cached blocks is kept per block hash and restored, and a cache hit is capped to
  the blocks whose routing is stored (``distributed/aux_output_connector/connector.py``: ``max_cache_hit``), so
  cached prompt tokens still have their rows. Speculative decoding: rows end at ``request.num_tokens - 1``
  (``take_output``): rejected draft tokens have none; a stop string trims the surplus rows
  (``v1/engine/output_processor.py``: ``_trim_surplus_tokens``).
- ``routed_experts_prompt_start`` (request, default 0) drops leading prompt rows; moeplace leaves it at 0.
"""

from __future__ import annotations

from typing import Any

from placer.tracer.engines.base import (
    BadResponse, Engine, NoRouting, Routed, WireShape, b64_bytes, field, id_list, int_field, npy_array, token_ids,
)


class VLLM(Engine):
    name = "vllm"
    stack = "vLLM"
    layer_axis = "decoder"
    shape_on_wire = True
    server_flag = "vllm serve MODEL --enable-return-routed-experts"
    version_paths = ("/version",)

    def request(self, prompt: str, model: str, max_new_tokens: int) -> dict[str, Any]:
        body = super().request(prompt, model, max_new_tokens)
        body["return_token_ids"] = True
        return body

    def extract(self, body: Any, shape: WireShape | None) -> list[Routed]:
        choices = field(body, "choices", "")
        if not isinstance(choices, list) or not choices:
            raise BadResponse("field 'choices' is empty or not a list")
        usage = body.get("usage")
        body_prompt_ids = id_list(body.get("prompt_token_ids"))  # chat responses list them at the top
        out = []
        for i, ch in enumerate(choices):
            where = f"choices[{i}]."
            if not isinstance(ch, dict):
                raise BadResponse(f"'{where[:-1]}' is not an object")
            raw = ch.get("routed_experts")
            if raw is None:
                raise NoRouting(f"'{where}routed_experts' is null or absent")
            experts = npy_array(b64_bytes(raw, where + "routed_experts"), where + "routed_experts")
            prompt_ids = id_list(ch.get("prompt_token_ids"))
            if prompt_ids is None:
                prompt_ids = body_prompt_ids
            output_ids = id_list(ch.get("token_ids"))
            if prompt_ids is not None:
                prompt = len(prompt_ids)
            elif len(choices) == 1:
                prompt = int_field(usage, "prompt_tokens", "usage.")
            else:
                raise BadResponse(f"{len(choices)} choices and no '{where}prompt_token_ids': the prompt length of "
                                  f"each is unknown (request with \"return_token_ids\": true)")
            if output_ids is not None:
                completion = len(output_ids)
            elif len(choices) == 1 and isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                completion = usage["completion_tokens"]
            else:
                completion = None
            out.append(Routed(experts, prompt, completion, token_ids(prompt_ids, output_ids)))
        return out
