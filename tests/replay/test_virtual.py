"""The virtual backend (every rank in this process): correct outputs in both modes, a corrupted plan caught,
measurements that add up, the reference itself checked against a direct formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from placer.replay.config import Case
from placer.replay.experts import RandomExperts, initial_hidden, rms_norm, swiglu
from placer.replay.reference import Schedule, load_routing, reference_outputs, tolerance
from placer.replay.virtual import run_virtual
from tests.replay.conftest import all_cases, make_config, plain_placement


def test_virtual_replay_is_correct_and_catches_corrupted_plans(small_trace):
    results, device, timer = run_virtual(make_config(small_trace, all_cases()))
    assert device == "cpu" and timer == "thread_time"  # one torch thread (make_config): CPU time
    by = {r["name"]: r for r in results}
    for name in ("plain-ep", "plain-coherent", "redundant-ep", "redundant-coherent"):
        chk = by[name]["check"]
        assert chk["correct"] and chk["tokens_checked"] == 600, (name, chk)
        assert chk["max_rel_error"] < 1e-5
    for name in ("bad-expert", "bad-weight"):
        chk = by[name]["check"]
        assert not chk["correct"] and chk["mismatched_tokens"] == 1, (name, chk)
        assert chk["max_rel_error"] > 1e3 * chk["tolerance"]


def test_virtual_measurements_add_up(small_trace):
    cfg = make_config(small_trace, all_cases(corrupt=False))
    results, _, _ = run_virtual(cfg)
    for r in results:
        # Every (token, expert) pair of the 3 measured steps is computed once: 2 per present token-layer.
        routing = load_routing(small_trace, 600, 4)
        present = routing.present_TL.sum() if routing.present_TL is not None else 600 * 4
        assert sum(rank["tokens_computed"] for rank in r["ranks"]) == 2 * present
        assert r["bytes_sent"] == sum(rank["bytes_sent"] for rank in r["ranks"])
        assert r["bytes_sent"] == r["bytes_intra_node"] + r["bytes_inter_node"] > 0
        assert r["bytes_sent"] % (32 * 4) == 0  # whole float32 rows of hidden 32
        assert len(r["layers"]) == 4 and all(x["compute_max_ms"] >= x["compute_mean_ms"] > 0 for x in r["layers"])
        assert r["compute_imbalance"] >= 1.0
        assert r["total_ms"] > 0 and "speedup_vs_first" not in r  # set by the report, across placements
    ep, coh = results[0], results[1]
    # The same placement computes the same pairs in both modes; only the traffic differs.
    assert [x["tokens_computed"] for x in ep["ranks"]] == [x["tokens_computed"] for x in coh["ranks"]]
    assert ep["return_ms"] == 0 and coh["return_ms"] > 0


def test_bfloat16_passes_its_looser_tolerance(small_trace):
    cfg = make_config(small_trace, [Case("plain", plain_placement(), "ep")], dtype="bfloat16", check="first")
    (r,), _, _ = run_virtual(cfg)
    assert r["check"]["correct"] and r["check"]["tokens_checked"] == 256
    assert r["check"]["tolerance"] == pytest.approx(tolerance("bfloat16", 4))
    assert r["bytes_sent"] % (32 * 2) == 0  # bf16 rows


def test_reference_matches_a_direct_formula_for_one_token(small_trace):
    """The reference, recomputed for one token with explicit loops in float64."""
    routing = load_routing(small_trace, 600, 4)
    src = RandomExperts(32, 48, 8, seed=5)
    ref = reference_outputs(routing, 256, 300, src, 32, "float32", 5, torch.device("cpu"))
    t = 7  # token 263 of the trace
    h = initial_hidden(5, 256, 44, 32)[t].double()
    for l in range(4):
        if routing.present_TL is not None and not routing.present_TL[256 + t, l]:
            continue
        hn = rms_norm(h[None].float()).double()
        add = sum(float(routing.weights_TLK[256 + t, l, k]) *
                  swiglu(hn, tuple(x.double() for x in src.get(l, int(routing.experts_TLK[256 + t, l, k]))))[0]
                  for k in range(2))
        h = h + add
    np.testing.assert_allclose(ref[t].numpy(), h.numpy(), rtol=1e-6)


def test_schedule_wraps_and_checks_each_trace_step_once():
    s = Schedule(num_tokens=600, tokens_per_step=256, steps=5, warmup=2)
    assert s.available == 3
    assert [s.token_range(i) for i in range(5)] == [(0, 256), (256, 512), (512, 600), (0, 256), (256, 512)]
    assert s.runs()[:3] == [(0, False), (1, False), (0, True)]
    assert s.checked_steps("all") == [0, 1, 2] and s.checked_steps("first") == [0] and s.checked_steps("none") == []


def test_weight_bank_shares_weights_and_seeds_are_stable():
    a = RandomExperts(16, 8, 4, seed=1)
    assert torch.equal(a.get(1, 2)[0], RandomExperts(16, 8, 4, seed=1).get(1, 2)[0])
    assert not torch.equal(a.get(1, 2)[0], a.get(1, 3)[0])
    bank = RandomExperts(16, 8, 4, seed=1, weight_bank=3)
    assert torch.equal(bank.get(0, 0)[2], bank.get(0, 3)[2])  # (0*4+0) % 3 == (0*4+3) % 3
    assert not torch.equal(bank.get(0, 0)[2], bank.get(0, 1)[2])


def test_weight_bytes_counts_distinct_experts_once(small_trace):
    from placer.replay.virtual import weight_bytes
    from tests.replay.conftest import redundant_placement

    cfg = make_config(small_trace, [Case("a", plain_placement(), "ep"), Case("b", redundant_placement(), "ep")])
    assert weight_bytes(cfg, cfg.expert_source()) == 4 * 8 * 3 * 32 * 48 * 4  # 4 layers x 8 experts, float32
    banked = make_config(small_trace, [Case("a", plain_placement(), "ep")], weight_bank=3)
    assert weight_bytes(banked, banked.expert_source()) == 3 * 3 * 32 * 48 * 4
