"""Correctness of the tracer for every supported family, on tiny random models built here.

The recorded experts are compared with independent computations of the router's choice for the same input:
the router module called on the hidden states the MoE block received (captured by a separate hook), and the
routing rule applied to the model's own ``output_router_logits``. Batches mix sequence lengths, so padding
is present and must be dropped; a wrong layer, rank or token order fails the comparison.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from placer.tracer.adapters import adapter_for, moe_routers
from placer.tracer.record import RouterRecorder, TraceOptions, left_pad, trace_batches
from tests.tracer.tiny_models import FAMILIES, tiny_model

PAD = 256
LENGTHS = (9, 3, 6)


def _sequences(seed: int = 0, lengths=LENGTHS) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=n).tolist() for n in lengths]


def _rank_order(ids: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Expert ids sorted by descending weight (stable): the trace's rank order, computed independently."""
    return np.take_along_axis(ids, np.argsort(-w, axis=-1, kind="stable"), axis=-1)


def _trace(model, family, seqs, **kw):
    adapter = adapter_for(family)
    routers = [r for _, r in moe_routers(model, adapter)]
    opts = TraceOptions(**{"batch_size": len(seqs), "seq_len": 64, **kw})
    with RouterRecorder(routers, adapter.weights_index, adapter.indices_index) as rec:
        batches = list(trace_batches(model, rec, seqs, opts, pad_id=PAD))
    return batches


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_experts_equal_the_routers_choice_on_captured_hidden_states(family):
    model = tiny_model(family)
    adapter = adapter_for(family)
    found = moe_routers(model, adapter)
    seqs = _sequences()
    # An independent hook on each MoE block (not the router) keeps the hidden states the block received.
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for layer_idx, _ in found:
        block = model.model.layers[layer_idx].mlp
        handles.append(block.register_forward_pre_hook(
            lambda mod, args, i=layer_idx: captured.__setitem__(i, args[0].detach().clone())
        ))
    try:
        (batch,) = _trace(model, family, seqs)
    finally:
        for h in handles:
            h.remove()

    S = max(LENGTHS)
    expected_TLK = []
    for b, seq in enumerate(seqs):
        per_layer = []
        for layer_idx, router in found:
            h = captured[layer_idx][b, S - len(seq):]  # the real tokens of sequence b (left padding)
            with torch.no_grad():
                out = router(h)
            ids = out[adapter.indices_index].numpy()
            w = out[adapter.weights_index].float().numpy()
            per_layer.append(_rank_order(ids, w))
        expected_TLK.append(np.stack(per_layer, axis=1))
    expected_TLK = np.concatenate(expected_TLK)

    assert batch.experts_TLK.shape == (sum(LENGTHS), len(found), found[0][1].top_k)
    np.testing.assert_array_equal(batch.experts_TLK, expected_TLK)
    np.testing.assert_array_equal(batch.seq_T, np.repeat(np.arange(3), LENGTHS))
    np.testing.assert_array_equal(batch.position_T, np.concatenate([np.arange(n) for n in LENGTHS]))
    np.testing.assert_array_equal(batch.token_T, np.concatenate(seqs))
    assert (batch.phase_T == 0).all()
    # Weights are in rank order too, and every row names K distinct experts.
    assert (np.diff(batch.weights_TLK, axis=-1) <= 0).all()
    srt = np.sort(batch.experts_TLK, axis=-1)
    assert (np.diff(srt, axis=-1) > 0).all()


def _expected_from_logits(family: str, router, logits: torch.Tensor) -> np.ndarray:
    """The family's routing rule applied to ``output_router_logits`` (written from the papers, not the code):
    the chosen experts as a sorted set per row."""
    logits = logits.float()
    K, E = router.top_k, router.num_experts
    if family in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"):
        chosen = logits.topk(K, dim=-1).indices  # softmax is monotone: top-k of probabilities = of logits
    elif family == "deepseek_v2":  # group_limited_greedy: best groups by their max probability
        p = logits.softmax(-1).view(-1, router.num_group, E // router.num_group)
        groups = p.max(-1).values.topk(router.topk_group, dim=-1).indices
        keep = torch.zeros_like(p[..., 0], dtype=torch.bool).scatter(1, groups, True)
        chosen = p.masked_fill(~keep[..., None], 0.0).view(-1, E).topk(K, dim=-1).indices
    elif family == "deepseek_v3":  # sigmoid + correction bias; groups scored by their two best experts
        s = logits.sigmoid() + router.e_score_correction_bias
        g = s.view(-1, router.num_group, E // router.num_group)
        groups = g.topk(2, dim=-1).values.sum(-1).topk(router.topk_group, dim=-1).indices
        keep = torch.zeros_like(g[..., 0], dtype=torch.bool).scatter(1, groups, True)
        chosen = g.masked_fill(~keep[..., None], float("-inf")).view(-1, E).topk(K, dim=-1).indices
    else:
        raise KeyError(family)
    return np.sort(chosen.numpy(), axis=-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_sets_equal_the_rule_applied_to_output_router_logits(family):
    model = tiny_model(family, seed=3)
    adapter = adapter_for(family)
    found = moe_routers(model, adapter)
    seqs = _sequences(seed=5)
    ids, mask, pos = left_pad(seqs, PAD)
    with RouterRecorder([r for _, r in found], adapter.weights_index, adapter.indices_index) as rec:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_router_logits=True)
        keep = mask.reshape(-1).bool()
        experts_TLK, _ = rec.take(keep)
    assert len(out.router_logits) == len(found)
    for l, (_, router) in enumerate(found):
        expected = _expected_from_logits(family, router, out.router_logits[l][keep])
        np.testing.assert_array_equal(np.sort(experts_TLK[:, l], axis=-1), expected, err_msg=f"MoE layer {l}")
    if family == "deepseek_v3":
        # The correction bias changes choices: the raw top-k of the logits is not what the model ran.
        raw = np.sort(torch.cat([o[keep] for o in out.router_logits]).topk(found[0][1].top_k).indices.numpy(), -1)
        got = np.sort(experts_TLK.transpose(1, 0, 2).reshape(-1, experts_TLK.shape[-1]), -1)
        assert (raw != got).any(axis=-1).mean() > 0.2


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_padding_in_a_batch_does_not_change_the_routing(family):
    model = tiny_model(family, seed=1)
    seqs = _sequences(seed=2)
    (together,) = _trace(model, family, seqs)
    alone = _trace(model, family, seqs, batch_size=1)
    np.testing.assert_array_equal(together.experts_TLK, np.concatenate([b.experts_TLK for b in alone]))


@pytest.mark.parametrize("family", ["qwen2_moe", "olmoe"])
def test_right_padding_is_dropped_by_the_attention_mask(family):
    model = tiny_model(family, seed=4)
    adapter = adapter_for(family)
    routers = [r for _, r in moe_routers(model, adapter)]
    seqs = _sequences(seed=6)
    (left,) = _trace(model, family, seqs)
    S = max(LENGTHS)
    ids = torch.full((3, S), PAD)
    mask = torch.zeros((3, S), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    with RouterRecorder(routers, adapter.weights_index, adapter.indices_index) as rec, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        right, _ = rec.take(mask.reshape(-1).bool())
    np.testing.assert_array_equal(right, left.experts_TLK)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_decode_tokens_route_as_the_same_tokens_in_prefill(family):
    model = tiny_model(family, seed=7)
    seqs = _sequences(seed=8, lengths=(5, 2))
    batches = _trace(model, family, seqs, generate=4)
    prefill, decode = batches[0], batches[1:]
    assert len(decode) == 4 and all((b.phase_T == 1).all() for b in decode)
    dec_tok = {0: [], 1: []}
    for b in decode:
        for s, p, t in zip(b.seq_T, b.position_T, b.token_T):
            assert p == len(seqs[s]) + len(dec_tok[s])
            dec_tok[int(s)].append(int(t))
    # The full sequences (prompt + fed tokens) traced as prefill give the decode rows' routing.
    full = [seqs[i] + dec_tok[i] for i in range(2)]
    ref = np.concatenate([b.experts_TLK for b in _trace(model, family, full, batch_size=1)])
    offsets = np.cumsum([0] + [len(f) for f in full])
    for b in decode:
        for row, (s, p) in enumerate(zip(b.seq_T, b.position_T)):
            np.testing.assert_array_equal(b.experts_TLK[row], ref[offsets[s] + p])
    np.testing.assert_array_equal(prefill.experts_TLK, ref[np.concatenate([np.arange(o, o + len(q)) for o, q in zip(offsets, seqs)])])


def test_decoding_stops_at_end_of_sequence():
    model = tiny_model("qwen3_moe", seed=7)
    seqs = _sequences(seed=8, lengths=(5, 2))
    every_id = frozenset(range(300))
    adapter = adapter_for("qwen3_moe")
    routers = [r for _, r in moe_routers(model, adapter)]
    with RouterRecorder(routers, adapter.weights_index, adapter.indices_index) as rec:
        batches = list(trace_batches(model, rec, seqs, TraceOptions(batch_size=2, generate=3), PAD, every_id))
    assert len(batches) == 1 and (batches[0].phase_T == 0).all()


def test_recorder_refuses_a_pass_where_a_router_did_not_run():
    from placer.core.errors import MoeplaceError

    model = tiny_model("mixtral")
    adapter = adapter_for("mixtral")
    routers = [r for _, r in moe_routers(model, adapter)]
    with RouterRecorder(routers, 1, 2) as rec:
        with pytest.raises(MoeplaceError, match=r"MoE layers \[0, 1, 2\]: router did not run"):
            rec.take(torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_tensor_layout_has_experts_on_dim0(family):
    from placer.tracer.adapters import moe_layer_tensors

    model = tiny_model(family)
    adapter = adapter_for(family)
    found = moe_routers(model, adapter)
    tensors = moe_layer_tensors(model, adapter)
    assert list(tensors) == [i for i, _ in found]
    E = found[0][1].num_experts
    for per_layer in tensors.values():
        assert set(per_layer) == set(adapter.router_tensors + adapter.expert_tensors)
        assert all(t.shape[0] == E for t in per_layer.values())


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss"])
def test_permuting_expert_tensors_permutes_the_routing(family):
    """The layout is complete: renumbering every listed tensor by a permutation renumbers the recorded
    experts and leaves the logits unchanged (for group-limited routing, a permutation that keeps groups)."""
    from placer.tracer.adapters import expert_groups, moe_layer_tensors

    model = tiny_model(family, seed=9)
    seqs = _sequences(seed=10)
    ids, mask, pos = left_pad(seqs, PAD)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    (b0,) = _trace(model, family, seqs)
    router = moe_routers(model, adapter_for(family))[0][1]
    E, G = router.num_experts, expert_groups(router, adapter_for(family))
    assert G == (4 if family == "deepseek_v3" else 1)
    g = torch.Generator().manual_seed(0)
    # New slot j holds old expert perm[j]: whole groups move, and experts move inside their group.
    blocks = torch.randperm(G, generator=g)
    perm = torch.cat([b * (E // G) + torch.randperm(E // G, generator=g) for b in blocks])
    with torch.no_grad():
        for per_layer in moe_layer_tensors(model, adapter_for(family)).values():
            for t in per_layer.values():
                t.copy_(t[perm])
        after = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    (b1,) = _trace(model, family, seqs)
    inv = torch.argsort(perm).numpy()  # old expert e now sits at inv[e]
    np.testing.assert_array_equal(b1.experts_TLK, inv[b0.experts_TLK])
    torch.testing.assert_close(after[mask.bool()], before[mask.bool()], rtol=1e-5, atol=1e-5)
