"""Real expert weights from a Hugging Face checkpoint (``--model``): read as transformers reads them, for the
per-expert layouts (Qwen-MoE/OLMoE/DeepSeek and Mixtral names) and the fused one, and replayed correctly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from placer.core.errors import InputError
from placer.core.placement import Placement
from placer.core.placement_io import save_placement
from placer.replay.experts import CheckpointExperts, swiglu
from tests.conftest import assert_one_line_error
from tests.replay.conftest import write_trace


def _tiny(kind):
    import transformers as tf

    common = dict(vocab_size=32, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, num_experts_per_tok=2)
    if kind == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(num_experts=4, moe_intermediate_size=16, **common)
        model = tf.Qwen3MoeForCausalLM(cfg)
    else:
        cfg = tf.MixtralConfig(num_local_experts=4, **common)
        model = tf.MixtralForCausalLM(cfg)
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def _experts_module(model, layer):
    return model.model.layers[layer].mlp.experts


@pytest.fixture(scope="module", params=["qwen3_moe", "mixtral"])
def checkpoint(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    model = _tiny(request.param)
    model.save_pretrained(d)
    return d, model


def test_checkpoint_experts_equal_the_transformers_expert_block(checkpoint):
    path, model = checkpoint
    ck = CheckpointExperts(path, (0, 1), 4)
    assert ck.hidden == 32 and ck.ffn in (16, 24)
    x = torch.randn(5, 32)
    idx = torch.tensor([[0, 3], [1, 2], [3, 1], [2, 0], [1, 3]])
    w = torch.rand(5, 2)
    for layer in (0, 1):
        with torch.no_grad():
            want = _experts_module(model, layer)(x, idx, w)
        got = torch.stack([sum(swiglu(x[t:t + 1], ck.get(layer, int(idx[t, k])))[0] * w[t, k] for k in range(2))
                           for t in range(5)])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_replay_with_model_weights(cli, checkpoint, tmp_path):
    path, _ = checkpoint
    trace = write_trace(tmp_path / "t.parquet", tokens=300, layers=2, experts=4, drop_rate=0.0)
    p = save_placement(Placement([[0, 2, 1, 3], [3, 1, 2, 0]], num_gpus=2, num_experts=4), tmp_path / "p.json")
    res = cli("replay", trace, p, "--model", path, "--backend", "virtual", "--tokens-per-step", 150, "--steps", 2,
              "--threads", 1, "--json")
    assert res.code == 0, res.err
    rep = json.loads(res.out)
    assert rep["hidden"] == 32 and rep["weights"].startswith("experts of checkpoint")
    assert rep["placements"][0]["check"]["correct"]
    assert_one_line_error(cli("replay", trace, p, "--model", path, "--hidden", 64), 2,
                          "--hidden 64 differs from the checkpoint's 32")


def test_fused_layout_and_refusals(tmp_path):
    from safetensors.torch import save_file

    E, F, H = 4, 6, 8
    gu = torch.randn(E, 2 * F, H)
    down = torch.randn(E, H, F)
    save_file({"model.layers.1.mlp.experts.gate_up_proj": gu, "model.layers.1.mlp.experts.down_proj": down,
               "model.layers.1.mlp.gate.weight": torch.randn(E, H)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_act": "silu"}))
    ck = CheckpointExperts(tmp_path, (1,), E)
    g, u, d = ck.get(0, 2)
    assert torch.equal(g, gu[2, :F]) and torch.equal(u, gu[2, F:]) and torch.equal(d, down[2])
    with pytest.raises(InputError, match="gate_up_proj holds 4 experts, the trace 5"):
        CheckpointExperts(tmp_path, (1,), 5)
    with pytest.raises(InputError, match="no routed expert weights found for decoder layer 0"):
        CheckpointExperts(tmp_path, (0,), E)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_act": "gelu"}))
    with pytest.raises(InputError, match="'hidden_act' is 'gelu'; replay runs SwiGLU"):
        CheckpointExperts(tmp_path, (1,), E)
    with pytest.raises(InputError, match="is a file; --model takes a Hugging Face checkpoint folder"):
        CheckpointExperts(tmp_path / "model.safetensors", (1,), E)
    np.testing.assert_equal(ck.key(0, 1), (1, 0, 1))


def test_a_checkpoint_with_fewer_experts_than_the_trace_is_refused(checkpoint):
    path, _ = checkpoint
    with pytest.raises(InputError, match=r"experts\.4\..* is missing: the trace has 5 experts in decoder layers \[0, 1\]"):
        CheckpointExperts(path, (0, 1), 5)
