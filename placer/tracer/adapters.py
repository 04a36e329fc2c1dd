"""One small adapter per supported model family: where its router is, what the router returns, how its
expert parameters are laid out. Everything the tracer (and checkpoint tools) know about a family is here.

In transformers 5 every supported family routes through a router module inside the decoder layer's MoE
block whose forward takes the flattened hidden states ``[B*S, H]`` and returns
``(router_logits [B*S, E], weights [B*S, K], indices [B*S, K])``: ``indices`` are the experts the block
then runs, after any group limit and correction bias (DeepSeek-V3), so the tracer records them and never
recomputes a top-k. Shared experts (Qwen2-MoE, DeepSeek) are separate modules and are never recorded.

To add a family: read its ``modeling_*.py``, then add one ``FamilyAdapter`` to ``ADAPTERS`` naming the
``model_type``, the router's path inside a decoder layer, the router class name, the output positions of
the weights and indices, and the expert parameter layout; then add the family to the correctness test
``tests/tracer/test_adapters.py`` (a tiny random config of the family).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from placer.core.errors import InputError


@dataclass(frozen=True)
class FamilyAdapter:
    """How to find and read the router of one model family (transformers 5 module layout).

    Parameter names are relative to a decoder layer ``model.layers.{i}``; every router tensor and every
    expert tensor listed has the experts on dimension 0, so renumbering experts is an index on dim 0.

    family: human name; model_types: the config ``model_type`` values it covers
    router_path: the router module inside a decoder layer (``mlp.gate``)
    router_class: class name the module at ``router_path`` must have (dense layers have none)
    weights_index, indices_index: positions of the gate weights and chosen expert ids in its output tuple
    router_tensors: router parameters/buffers with experts on dim 0 (``mlp.gate.weight``, biases)
    expert_tensors: fused expert parameters ``[E, ...]`` of the experts module
    shared_expert_path: module of shared experts, never recorded (None when the family has none)
    groups_attr: router attribute holding the number of expert groups of group-limited routing (DeepSeek):
        experts ``[g*E/G, (g+1)*E/G)`` form group g, and a renumbering must keep every expert in its group
        (or move whole groups), else the routing changes
    """

    family: str
    model_types: tuple[str, ...]
    router_path: str
    router_class: str
    weights_index: int = 1
    indices_index: int = 2
    router_tensors: tuple[str, ...] = ("mlp.gate.weight",)
    expert_tensors: tuple[str, ...] = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
    shared_expert_path: str | None = None
    groups_attr: str | None = None
    notes: str = ""
    layers_attr: tuple[str, ...] = field(default=("model", "layers"))


ADAPTERS: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        family="Mixtral", model_types=("mixtral",), router_path="mlp.gate", router_class="MixtralTopKRouter",
        notes="softmax over logits, top-k, renormalised",
    ),
    FamilyAdapter(
        family="Qwen2-MoE", model_types=("qwen2_moe",), router_path="mlp.gate", router_class="Qwen2MoeTopKRouter",
        shared_expert_path="mlp.shared_expert",
        notes="dense layers from mlp_only_layers / decoder_sparse_step; one gated shared expert (not recorded)",
    ),
    FamilyAdapter(
        family="Qwen3-MoE", model_types=("qwen3_moe",), router_path="mlp.gate", router_class="Qwen3MoeTopKRouter",
        notes="dense layers from mlp_only_layers / decoder_sparse_step; the bundled tiny model",
    ),
    FamilyAdapter(
        family="OLMoE", model_types=("olmoe",), router_path="mlp.gate", router_class="OlmoeTopKRouter",
    ),
    FamilyAdapter(
        family="DeepSeek-V2", model_types=("deepseek_v2",), router_path="mlp.gate",
        router_class="DeepseekV2TopkRouter", shared_expert_path="mlp.shared_experts", groups_attr="num_group",
        notes="greedy or group_limited_greedy top-k (unsorted); first_k_dense_replace dense layers",
    ),
    FamilyAdapter(
        family="DeepSeek-V3", model_types=("deepseek_v3",), router_path="mlp.gate",
        router_class="DeepseekV3TopkRouter", shared_expert_path="mlp.shared_experts", groups_attr="num_group",
        router_tensors=("mlp.gate.weight", "mlp.gate.e_score_correction_bias"),
        notes="sigmoid scores + e_score_correction_bias, group-limited top-k (unsorted); dense first layers",
    ),
    FamilyAdapter(
        family="GPT-OSS", model_types=("gpt_oss",), router_path="mlp.router", router_class="GptOssTopKRouter",
        router_tensors=("mlp.router.weight", "mlp.router.bias"),
        expert_tensors=("mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias",
                        "mlp.experts.down_proj", "mlp.experts.down_proj_bias"),
        notes="top-k of logits, softmax over the k; expert tensors transposed ([E, H, 2I]) with biases",
    ),
)

_BY_TYPE = {t: a for a in ADAPTERS for t in a.model_types}


def supported_families() -> str:
    """``Mixtral (mixtral), Qwen2-MoE (qwen2_moe), ...`` for messages and help."""
    return ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS)


def adapter_for(model_type: str, where: str = "model") -> FamilyAdapter:
    """The adapter of a config ``model_type``; a InputError listing the supported families otherwise."""
    adapter = _BY_TYPE.get(model_type)
    if adapter is None:
        raise InputError(
            f"{where}: model_type '{model_type}' is not a supported MoE family; supported: {supported_families()}; "
            f"to add one, write a FamilyAdapter in placer/tracer/adapters.py"
        )
    return adapter


def decoder_layers(model, adapter: FamilyAdapter):
    """The model's list of decoder layers (``model.model.layers`` for every supported family)."""
    obj = model
    for name in adapter.layers_attr:
        obj = getattr(obj, name, None)
        if obj is None:
            raise InputError(
                f"{type(model).__name__}: has no '{'.'.join(adapter.layers_attr)}' decoder layers; "
                f"load it with AutoModelForCausalLM"
            )
    return obj


def moe_routers(model, adapter: FamilyAdapter) -> list[tuple[int, object]]:
    """``(decoder layer index, router module)`` of every MoE layer, in layer order; dense layers skipped."""
    found = []
    for i, layer in enumerate(decoder_layers(model, adapter)):
        try:
            router = layer.get_submodule(adapter.router_path)
        except AttributeError:
            continue
        if type(router).__name__ == adapter.router_class:
            found.append((i, router))
    return found


def router_shape(router) -> tuple[int, int]:
    """(experts, top-k) of a router module (every supported router has ``num_experts`` and ``top_k``)."""
    return int(router.num_experts), int(router.top_k)


def expert_groups(router, adapter: FamilyAdapter) -> int:
    """Number of expert groups of a router's group-limited routing (1 when routing is not group-limited)."""
    if adapter.groups_attr is None or getattr(router, "topk_method", "group_limited_greedy") == "greedy":
        return 1
    return int(getattr(router, adapter.groups_attr, None) or 1)


def moe_layer_tensors(model, adapter: FamilyAdapter) -> dict[int, dict[str, object]]:
    """For checkpoint tools: per MoE decoder layer index, every tensor whose dim 0 indexes the experts
    (``adapter.router_tensors`` + ``adapter.expert_tensors``, names relative to the decoder layer).

    Renumbering experts is ``t.copy_(t[perm])`` on each of them (in memory); ``save_pretrained`` then
    writes transformers' own checkpoint layout (for Qwen3-MoE one key per expert,
    ``model.layers.{i}.mlp.experts.{e}.gate_proj.weight`` and so on).
    """
    layers = decoder_layers(model, adapter)
    out: dict[int, dict[str, object]] = {}
    for i, _router in moe_routers(model, adapter):
        tensors = {}
        for name in adapter.router_tensors + adapter.expert_tensors:
            module_path, _, attr = name.rpartition(".")
            tensors[name] = getattr(layers[i].get_submodule(module_path), attr)
        out[i] = tensors
    return out
