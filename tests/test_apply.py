"""``moeplace apply``: a renumbered checkpoint computes the same logits, and its routing is the old routing renumbered.

Tiny random models of each supported family are built here with ``save_pretrained`` (float32), a placement
permutes their experts, and the new checkpoint is loaded back with transformers and compared with the old one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from placer.apply import PROVENANCE, apply_placement, read_checkpoint
from placer.core.errors import InputError
from placer.core.placement import Placement
from placer.core.placement_io import save_placement
from tests.conftest import assert_one_line_error

COMMON = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
              max_position_embeddings=64, tie_word_embeddings=False)
MLA = dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)


def _config(family: str):
    import transformers as tf

    if family == "mixtral":
        return tf.MixtralConfig(**COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)
    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(**COMMON, intermediate_size=16, moe_intermediate_size=16, num_experts=8,
                                 num_experts_per_tok=2, head_dim=8)
    if family == "qwen2_moe":
        return tf.Qwen2MoeConfig(**COMMON, intermediate_size=16, moe_intermediate_size=16, num_experts=8,
                                 num_experts_per_tok=2, shared_expert_intermediate_size=16)
    if family == "olmoe":
        return tf.OlmoeConfig(**COMMON, intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "gpt_oss":
        return tf.GptOssConfig(**COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, head_dim=8)
    if family == "deepseek_v3":  # group-limited: 2 groups of 4, each token picks experts from 1 group
        return tf.DeepseekV3Config(**COMMON, **MLA, intermediate_size=32, moe_intermediate_size=16, n_routed_experts=8,
                                   num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
                                   n_shared_experts=1)
    if family == "deepseek_v2":
        return tf.DeepseekV2Config(**COMMON, **MLA, intermediate_size=32, moe_intermediate_size=16, n_routed_experts=8,
                                   num_experts_per_tok=2, n_group=2, topk_group=1, topk_method="group_limited_greedy",
                                   first_k_dense_replace=1, n_shared_experts=1)
    raise AssertionError(family)


FAMILIES = ["mixtral", "qwen3_moe", "qwen2_moe", "olmoe", "gpt_oss", "deepseek_v3", "deepseek_v2"]


def _build(family: str, path: Path, **save_kw) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family), dtype=torch.float32)
    with torch.no_grad():
        # Random router biases (zero at init), so that a bias left unpermuted would change the routing.
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if "e_score_correction_bias" in name or ("router" in name and name.endswith("bias")):
                t.normal_(0.0, 0.3)
            elif "experts" in name and name.endswith("bias"):
                t.normal_(0.0, 0.1)
    model.save_pretrained(path, **save_kw)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {f: _build(f, root / f) for f in FAMILIES}


def _load(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    # The eager experts loop runs in any dtype (the grouped_mm kernel refuses float64).
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, experts_implementation="eager").eval()


def _logits_and_routing(model, ids: torch.Tensor) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Logits, and per MoE layer the [T, K] experts the model dispatched each token to (hooked at the experts
    module, whose inputs in transformers 5 are (hidden_states, top_k_index, top_k_weights) in every family)."""
    got: list[np.ndarray] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: got.append(args[1].detach().cpu().numpy().copy()))
             for name, m in model.named_modules() if name.endswith("mlp.experts")]
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, got


def _permutation_placement(path: Path, G: int = 2, seed: int = 0, group_size: int | None = None) -> Placement:
    ck = read_checkpoint(path)
    E, rng, rows = ck.num_experts, np.random.default_rng(seed), []
    for _ in ck.moe_layers:
        if group_size:  # whole groups in a new order, experts shuffled inside each group
            order = rng.permutation(E // group_size)
            rows.append(np.concatenate([g * group_size + rng.permutation(group_size) for g in order]))
        else:
            rows.append(rng.permutation(E))
    return Placement(phy2log_LP=rows, num_gpus=G, num_experts=E,
                     model_layer_indices=tuple(l.model_index for l in ck.moe_layers))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_model_renumbered(old_dir: Path, new_dir: Path, p: Placement, seed: int = 1) -> None:
    ids = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(seed))
    old_logits, old_routes = _logits_and_routing(_load(old_dir), ids)
    new_logits, new_routes = _logits_and_routing(_load(new_dir), ids)
    torch.testing.assert_close(new_logits, old_logits, atol=1e-5, rtol=0)
    assert len(old_routes) == len(new_routes) == p.num_layers
    moved = 0
    for l, (old, new) in enumerate(zip(old_routes, new_routes)):
        renumbered = p.phy2log_LP[l][new]  # new expert e is old expert phy2log[l, e]
        np.testing.assert_array_equal(np.sort(renumbered, axis=1), np.sort(old, axis=1))
        moved += int((new != old).sum())
    assert moved > 0, "the permutation did not change any expert number: the test would prove nothing"


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_keeps_logits_and_renumbers_routing(models, tmp_path, family):
    src = models[family]
    before = _digest(src)
    group = 4 if family.startswith("deepseek") else None
    p = _permutation_placement(src, group_size=group)
    r = apply_placement(p, src, tmp_path / "new", progress=False)
    assert r.family == family and r.experts_moved > 0 and r.tensors_permuted > 0
    assert_same_model_renumbered(src, tmp_path / "new", p)
    assert _digest(src) == before  # the input is only read
    # Files other than the shards are copied unchanged; the mapping is recorded beside them.
    new = _digest(tmp_path / "new")
    for name, h in before.items():
        if not name.endswith(".safetensors"):
            assert new[name] == h, name
    prov = json.loads((tmp_path / "new" / PROVENANCE).read_text())
    assert prov["new_to_old"] == p.phy2log_LP.tolist() and prov["moe_layer_indices"] == list(p.model_layer_indices)


def test_sharded_checkpoint(tmp_path):
    """Experts whose tensors sit in different shards: each tensor keeps its shard, its content moves."""
    src = _build("mixtral", tmp_path / "src", max_shard_size="40KB")
    shards = sorted(x.name for x in src.glob("*.safetensors"))
    (src / "consolidated.safetensors").write_bytes((src / shards[0]).read_bytes())  # a stale second copy
    assert len(shards) > 2 and (src / "model.safetensors.index.json").exists()
    p = _permutation_placement(src, G=4, seed=3)
    r = apply_placement(p, src, tmp_path / "new", progress=False)
    assert r.omitted == ["consolidated.safetensors"]  # not in the index: it would keep the old numbering
    assert sorted(x.name for x in (tmp_path / "new").glob("*.safetensors")) == shards
    assert_same_model_renumbered(src, tmp_path / "new", p)


def test_identity_placement_gives_identical_tensors(models, tmp_path):
    from safetensors.torch import load_file

    src = models["qwen3_moe"]
    ck = read_checkpoint(src)
    p = Placement(phy2log_LP=np.tile(np.arange(8), (len(ck.moe_layers), 1)), num_gpus=4, num_experts=8)
    r = apply_placement(p, src, tmp_path / "same", progress=False)
    assert r.experts_moved == 0 and r.tensors_renamed == 0
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "same" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_group_limited_routing_refuses_cross_group_moves(models, tmp_path):
    src = models["deepseek_v3"]
    p = _permutation_placement(src, group_size=4)
    rows = p.phy2log_LP.copy()
    rows[1, [0, 7]] = rows[1, [7, 0]]  # swap an expert of new group 0 with one of new group 1
    bad = p.with_(phy2log_LP=rows)
    with pytest.raises(InputError, match=r"layer 1 \(decoder layer 2\) puts old experts .* in new group 0; "
                                         r"deepseek_v3 routing is group-limited \(n_group 2, topk_group 1"):
        apply_placement(bad, src, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_apply_and_its_refusals(cli, models, tmp_path):
    src = models["mixtral"]
    before = _digest(src)
    good = save_placement(_permutation_placement(src), tmp_path / "good.json")
    out = tmp_path / "out"
    res = cli("apply", good, "--model", src, "--out", out)
    assert res.code == 0, res.err
    assert "wrote" in res.out and "mixtral" in res.out and (out / "config.json").exists()

    # An existing output folder is refused without --force, replaced with it.
    assert_one_line_error(cli("apply", good, "--model", src, "--out", out), 2, "already exists; pass --force")
    (out / "stale.txt").write_text("old")
    assert cli("apply", good, "--model", src, "--out", out, "--force").code == 0
    assert not (out / "stale.txt").exists()

    # Redundant copies cannot be applied to a checkpoint.
    ck = read_checkpoint(src)
    red = Placement(phy2log_LP=[list(range(8)) + [0, 1]] * len(ck.moe_layers), num_gpus=2, num_experts=8)
    res = cli("apply", save_placement(red, tmp_path / "red.json"), "--model", src, "--out", tmp_path / "o2")
    assert_one_line_error(res, 2, "red.json", "has 2 redundant slots per layer", "without redundant copies")

    # Shape mismatches name both sides.
    wrong = Placement(phy2log_LP=[list(range(8))] * 2, num_gpus=2, num_experts=8)
    res = cli("apply", save_placement(wrong, tmp_path / "w.json"), "--model", src, "--out", tmp_path / "o3")
    assert_one_line_error(res, 2, "has 2 MoE layers", "has 3")
    shifted = _permutation_placement(src).with_(model_layer_indices=(1, 2, 3))
    res = cli("apply", save_placement(shifted, tmp_path / "s.json"), "--model", src, "--out", tmp_path / "o4")
    assert_one_line_error(res, 2, "decoder layers 1-3", "are 0-2")

    # The output may not be the input or inside it.
    assert_one_line_error(cli("apply", good, "--model", src, "--out", src / "sub"), 2, "must be outside the input")
    assert_one_line_error(cli("apply", good, "--model", src, "--out", src, "--force"), 2, "must be outside the input")

    assert _digest(src) == before
    assert not list(tmp_path.glob(".*.tmp")) and not list(src.parent.glob(".*.tmp"))


def test_cli_apply_bad_checkpoints(cli, tmp_path):
    from safetensors.torch import save_file

    p = save_placement(Placement(phy2log_LP=[[1, 0, 3, 2]], num_gpus=2, num_experts=4), tmp_path / "p.json")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"model.layers.0.mlp.gate_proj.weight": torch.zeros(2, 2)}, llama / "model.safetensors")
    res = cli("apply", p, "--model", llama, "--out", tmp_path / "o")
    assert_one_line_error(res, 2, "model_type 'llama' has no checkpoint adapter",
                          "supported: mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3")
    assert_one_line_error(cli("apply", p, "--model", tmp_path / "nope", "--out", tmp_path / "o"), 2, "model folder not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "mixtral", "num_local_experts": 4}))
    assert_one_line_error(cli("apply", p, "--model", empty, "--out", tmp_path / "o"), 2, "no .safetensors files")
    save_file({"model.layers.0.block_sparse_moe.gate.weight": torch.zeros(4, 2),
               **{f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight": torch.zeros(2, 2) for e in (0, 1, 3)}},
              empty / "model.safetensors")
    assert_one_line_error(cli("apply", p, "--model", empty, "--out", tmp_path / "o"), 2,
                          "layer 0: 'model.layers.0.block_sparse_moe.experts.N.w1.weight': expert 2 is missing")
    # Two files holding the same tensor, and no index to say which is the checkpoint.
    save_file({"model.layers.0.block_sparse_moe.gate.weight": torch.zeros(4, 2)}, empty / "consolidated.safetensors")
    assert_one_line_error(cli("apply", p, "--model", empty, "--out", tmp_path / "o"), 2,
                          "tensor 'model.layers.0.block_sparse_moe.gate.weight' is in both consolidated.safetensors "
                          "and model.safetensors")
    assert not (tmp_path / "o").exists()


# -- the bundled model, traced (needs the tracer and the bundled model of issue 3) ---------------------------------
def _bundled() -> Path:
    import placer

    return Path(placer.__file__).parent / "bundled" / "tiny-moe"


def _has_trace_command() -> bool:
    from placer.cli.app import app

    return any((c.name or getattr(c.callback, "__name__", "")) == "trace" for c in app.registered_commands)


@pytest.mark.skipif(not (_bundled() / "config.json").exists() or not _has_trace_command(),
                    reason="needs the bundled model (placer/bundled/tiny-moe) and `moeplace trace` (issue 3)")
def test_bundled_model_routing_read_by_the_tracer_is_renumbered(cli, tmp_path):
    from placer.core.trace.reader import read_trace

    src = _bundled()
    ck = read_checkpoint(src)
    G = next(g for g in (4, 2, 1) if ck.num_experts % g == 0)
    p = _permutation_placement(src, G=G, seed=7)
    res = cli("apply", save_placement(p, tmp_path / "p.json"), "--model", src, "--out", tmp_path / "new")
    assert res.code == 0, res.err

    # Same logits to 1e-5 on byte-level text. Computed in float64: in float32 the experts' outputs are summed in
    # another order after renumbering, which alone moves logits of magnitude ~10 by ~1e-5 (seen: 1.3e-5).
    ids = torch.tensor([list(b"def apply(placement):\n    return placement")])
    torch.testing.assert_close(_load(tmp_path / "new", torch.float64)(ids).logits,
                               _load(src, torch.float64)(ids).logits, atol=1e-5, rtol=0)

    # The tracer's record of the new checkpoint is the old one's, renumbered.
    text = tmp_path / "text.txt"
    text.write_text("Expert placement moves tokens between GPUs. " * 20)
    for name, model in (("old", src), ("new", tmp_path / "new")):
        res = cli("trace", "--model", model, "--text", text, "--max-tokens", 256, "--out", tmp_path / f"{name}.parquet")
        assert res.code == 0, res.err
    (m_old, b_old), (m_new, b_new) = read_trace(tmp_path / "old.parquet"), read_trace(tmp_path / "new.parquet")
    assert m_old.moe_layer_indices == m_new.moe_layer_indices == p.model_layer_indices
    old, new = b_old.experts_TLK.astype(np.int64), b_new.experts_TLK.astype(np.int64)
    assert old.shape == new.shape and (old != new).any()
    for l in range(p.num_layers):
        np.testing.assert_array_equal(np.sort(p.phy2log_LP[l][new[:, l]], axis=1), np.sort(old[:, l], axis=1))
