"""SGLang: routing in ``sglext.routed_experts`` (OpenAI-compatible) or ``meta_info.routed_experts`` (``/generate``).

Read from the sglang 0.5.23 wheel (PyPI), files under ``sglang/``:

- Two switches: the server flag ``--enable-return-routed-experts`` (``srt/arg_groups/fields/exec_.py``) creates
  the capturer, and the request field ``"return_routed_experts": true`` (``srt/entrypoints/openai/protocol.py``,
  ``CompletionRequest``) asks for it. With the flag off the capturer is None and the response simply has no
  routing (``srt/managers/scheduler_components/batch_result_processor.py``: ``_maybe_collect_routed_experts``
  returns early; ``SglExt`` drops None fields): the request is not refused.
- Encoding: base64 of the raw bytes of an int32 tensor, flat, without a shape (``srt/managers/
  detokenizer_manager.py``: ``_b64_encode_per_request``; decoder ``extract_routed_experts_from_meta_info`` in
  ``srt/state_capturer/routed_experts.py`` is ``np.frombuffer(..., dtype=np.int32)``). The shape is
  ``[rows, num_hidden_layers, num_experts_per_tok]`` (``RoutedExpertsCapturer.__init__``: ``num_layers =
  hf_text_config.num_hidden_layers``, ``topk_size = num_experts_per_tok``; fused shared-expert columns are cut
  off). The layer axis is the decoder-layer index (``TopK.layer_id``, "global index of the owning layer",
  ``srt/layers/moe/topk.py``); dense layers keep the zeros the host buffer was cleared to (``state_capturer/
  base.py``).
- Rows: ``[routed_experts_start_len, seqlen - 1)`` with ``seqlen = prompt + generated`` (``get_topk`` in
  ``state_capturer/base.py``, ``batch_result_processor.py``); moeplace sends no ``routed_experts_start_len`` (0).
- OpenAI responses put it once per response, taken from the first prompt's result only
  (``srt/entrypoints/openai/serving_completions.py``: ``_build_completion_response``, "from first ret_item").
- Ids are logical: captured in ``_post_process_topk_ids`` before ``topk_ids_logical_to_physical``.
- Prefix caching: the host buffer is indexed by KV-cache slot, so a cached prefix's rows are the ones written
  when it was computed. Speculative decoding: draft models never capture (``disable_routed_experts_capture_for_
  draft``); rows follow the request's accepted tokens (``req_to_token``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from placer.tracer.engines.base import (
    BadResponse, Engine, NoRouting, Routed, WireShape, b64_bytes, id_list, int_field, token_ids,
)


class ShapeMismatch(Exception):
    """The flat int32 routing does not fit --num-layers x --top-k (a user option, so exit code 2)."""


class SGLang(Engine):
    name = "sglang"
    stack = "SGLang"
    layer_axis = "decoder"
    shape_on_wire = False
    server_flag = "python -m sglang.launch_server --model-path MODEL --enable-return-routed-experts"
    version_paths = ("/server_info", "/get_server_info")

    def request(self, prompt: str, model: str, max_new_tokens: int) -> dict[str, Any]:
        body = super().request(prompt, model, max_new_tokens)
        body["return_routed_experts"] = True
        body["return_token_ids"] = True
        return body

    def extract(self, body: Any, shape: WireShape | None) -> list[Routed]:
        assert shape is not None, "SGLang routing has no shape on the wire"
        items = body if isinstance(body, list) else [body]
        out = []
        for item in items:
            if not isinstance(item, dict):
                raise BadResponse("the response is not a JSON object")
            if "meta_info" in item:  # native /generate (one object per prompt)
                meta = item["meta_info"]
                raw = meta.get("routed_experts") if isinstance(meta, dict) else None
                if raw is None:
                    raise NoRouting("no 'meta_info.routed_experts' in the response")
                where, prompt_ids, output_ids = "meta_info.routed_experts", None, id_list(item.get("output_ids"))
                prompt = int_field(meta, "prompt_tokens", "meta_info.")
                completion = meta.get("completion_tokens") if isinstance(meta.get("completion_tokens"), int) else None
            else:  # /v1/completions or /v1/chat/completions
                ext = item.get("sglext")
                raw = ext.get("routed_experts") if isinstance(ext, dict) else None
                where = "sglext.routed_experts"
                if raw is None:
                    raise NoRouting(f"no '{where}' in the response")
                choices = item.get("choices")
                if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                    raise BadResponse("field 'choices' is empty or not a list of objects")
                first = choices[0]  # SGLang's routing belongs to the first prompt's result
                prompt_ids, output_ids = id_list(first.get("prompt_token_ids")), id_list(first.get("token_ids"))
                if prompt_ids is not None:
                    prompt = len(prompt_ids)
                elif len(choices) == 1:
                    prompt = int_field(item.get("usage"), "prompt_tokens", "usage.")
                else:
                    raise BadResponse(f"{len(choices)} choices and no 'choices[0].prompt_token_ids': the prompt "
                                      f"length of the routed sequence is unknown (request with \"return_token_ids\": true)")
                usage = item.get("usage")
                completion = len(output_ids) if output_ids is not None else (
                    usage.get("completion_tokens") if len(choices) == 1 and isinstance(usage, dict) else None)
            flat = np.frombuffer(b64_bytes(raw, where), dtype="<i4")
            per_token = shape.layers * shape.top_k
            rows, rest = divmod(flat.size, per_token)
            if rest or (isinstance(completion, int) and completion > 0 and rows != prompt + completion - 1):
                expect = f"{prompt} prompt + {completion} generated - 1 = {prompt + completion - 1}" if isinstance(
                    completion, int) else f"a whole number of {per_token}-value rows"
                raise ShapeMismatch(f"'{where}' holds {flat.size} int32 values, not rows of --num-layers {shape.layers} "
                                    f"x --top-k {shape.top_k} for {expect} tokens; check --num-layers (the model's "
                                    f"num_hidden_layers) and --top-k")
            out.append(Routed(flat.reshape(rows, shape.layers, shape.top_k), prompt,
                              completion if isinstance(completion, int) else None, token_ids(prompt_ids, output_ids)))
        return out
