"""Tiny random models of every supported family, built in the tests (nothing downloaded)."""

from __future__ import annotations

import torch

VOCAB = 300  # >= 259: the byte vocabulary fits, so a saved tiny model can use byte_tokenizer.json


def _common(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                max_position_embeddings=128, pad_token_id=256, bos_token_id=257, eos_token_id=258)
    base.update(kw)
    return base


def tiny_config(model_type: str):
    """A 2-4 layer config of the family with a few experts; dense layers where the family has them."""
    import transformers as tf

    if model_type == "mixtral":
        return tf.MixtralConfig(**_common(intermediate_size=16, num_hidden_layers=3, head_dim=16,
                                          num_local_experts=6, num_experts_per_tok=2))
    if model_type == "qwen2_moe":
        return tf.Qwen2MoeConfig(**_common(intermediate_size=32, moe_intermediate_size=16,
                                           shared_expert_intermediate_size=16, num_hidden_layers=3,
                                           num_experts=6, num_experts_per_tok=2, mlp_only_layers=[1]))
    if model_type == "qwen3_moe":
        return tf.Qwen3MoeConfig(**_common(intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=4,
                                           head_dim=16, num_experts=8, num_experts_per_tok=3, norm_topk_prob=True,
                                           decoder_sparse_step=2))
    if model_type == "olmoe":
        return tf.OlmoeConfig(**_common(intermediate_size=16, num_hidden_layers=2, num_experts=6,
                                        num_experts_per_tok=2))
    mla = dict(num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
               head_dim=8)
    if model_type == "deepseek_v2":
        return tf.DeepseekV2Config(**_common(intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                                             n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                                             first_k_dense_replace=1, topk_method="group_limited_greedy",
                                             n_group=4, topk_group=2, **mla))
    if model_type == "deepseek_v3":
        return tf.DeepseekV3Config(**_common(intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                                             n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
                                             first_k_dense_replace=1, n_group=4, topk_group=2,
                                             routed_scaling_factor=2.5, **mla))
    if model_type == "gpt_oss":
        return tf.GptOssConfig(**_common(intermediate_size=16, num_hidden_layers=2, head_dim=16,
                                         num_local_experts=6, num_experts_per_tok=2, sliding_window=8,
                                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    raise KeyError(model_type)


FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss")


def tiny_model(model_type: str, seed: int = 0):
    """The tiny model in eval mode, float32, with router weights (and biases) drawn large enough that the
    choices are far from ties; DeepSeek-V3's correction bias is drawn too, so it changes the choices."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp.gate." in name or ".mlp.router." in name:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.ndim == 2 else 0.5))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return model
