"""The cost model (``placer.core.cost``) against a hand-worked example and a plain per-token simulation."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from placer.core.cost import (
    TraceEvaluator,
    evaluate_load,
    evaluate_many,
    evaluate_trace,
    pair_hops_from_trans,
    with_speedups,
)
from placer.core.placement import Placement, SolveReport
from placer.core.stats import compute_stats
from placer.core.topology import Topology, preset
from placer.core.trace.reader import concat_batches
from placer.core.trace.schema import RoutingBatch
from placer.synth import SynthConfig, generate

# ---------------------------------------------------------------------------------------------------
# The reference: the rules of docs/cost-model.md, token by token, with Python sets.
# ---------------------------------------------------------------------------------------------------


def simulate(batch: RoutingBatch, p: Placement, topo: Topology, mode: str, tokens_per_step=None) -> dict:
    L, E, P, G, N = p.num_layers, p.num_experts, p.num_slots, p.num_gpus, p.num_nodes
    spg, gpn = P // G, G // N
    node = lambda g: g // gpn  # noqa: E731
    phy = p.phy2log_LP
    replicas = {(l, e): [s for s in range(P) if phy[l, s] == e] for l in range(L) for e in range(E)}
    ex = batch.experts_TLK.astype(int)
    present = batch.present_or_ones()
    T, K = ex.shape[0], ex.shape[2]
    step = tokens_per_step or T
    out = defaultdict(lambda: np.zeros(L, dtype=np.int64))
    load = np.zeros((L, G), dtype=np.int64)
    gpu_bytes = {"intra": np.zeros(G, np.int64), "inter": np.zeros(G, np.int64)}
    compute_L, comm_L = np.zeros(L), np.zeros(L)
    tb = topo.token_bytes
    for s0 in range(0, T, step):
        slot_tok = defaultdict(int)
        sends = defaultdict(int)  # (phase, link, layer, gpu) -> messages

        def send(phase, link, l, g):
            sends[phase, link, l, g] += 1
            gpu_bytes[link][g] += tb
            out[f"{link}_bytes"][l] += tb

        for t in range(s0, min(s0 + step, T)):
            h = int(batch.seq_T[t]) % G
            prev = None  # (S, gpu of each rank) at the previous layer, if present there
            for l in range(L):
                if not present[t, l]:
                    prev = None
                    continue
                out["present"][l] += 1
                slots = [replicas[l, e][t % len(replicas[l, e])] for e in ex[t, l]]
                for s in slots:
                    slot_tok[l, s] += 1
                    load[l, s // spg] += 1
                gk = [s // spg for s in slots]
                S = set(gk)
                if mode == "ep":
                    remote = S - {h}
                    out["remote_gpus"][l] += len(remote)
                    remote_nodes = {node(g) for g in S} - {node(h)}
                    out["remote_nodes"][l] += len(remote_nodes)
                    for g in remote:
                        if node(g) == node(h):
                            send("A", "intra", l, h)
                            send("B", "intra", l, g)
                    for n in remote_nodes:
                        arrival, *others = sorted(g for g in S if node(g) == n)
                        send("A", "inter", l, h)
                        send("B", "inter", l, arrival)
                        for g in others:
                            send("A", "intra", l, arrival)
                            send("B", "intra", l, g)
                else:
                    if l == 0:
                        for g in S - {h}:
                            out["entry"][l] += 1
                            out["node_entry"][l] += node(g) != node(h)
                            send("A", "inter" if node(g) != node(h) else "intra", l, h)
                    elif prev is not None:
                        pS, pgk = prev
                        out["pair_tokens"][l] += 1
                        out["messages"][l] += len(pS) * len(S) - len(pS & S)
                        for a in pS:
                            for b in S:
                                if a != b:
                                    out["node_messages"][l] += node(a) != node(b)
                                    send("A", "inter" if node(a) != node(b) else "intra", l, a)
                        for a in pgk:
                            for b in gk:
                                out["pair_hops"][l] += a != b
                                out["node_pair_hops"][l] += node(a) != node(b)
                    if l == L - 1:
                        for g in S - {h}:
                            out["exit"][l] += 1
                            out["node_exit"][l] += node(g) != node(h)
                            send("B", "inter" if node(g) != node(h) else "intra", l, g)
                    prev = (S, gk)
        for l in range(L):
            per_gpu = [sum(float(topo.expert_time_us(slot_tok[l, s])) for s in range(g * spg, (g + 1) * spg))
                       for g in range(G)]
            compute_L[l] += max(per_gpu)
            for phase in "AB":
                comm_L[l] += max(float(topo.link_time_us(sends[phase, "intra", l, g] * tb, sends[phase, "inter", l, g] * tb,
                                                         sends[phase, "intra", l, g], sends[phase, "inter", l, g]))
                                 for g in range(G))
    out = dict(out)
    out.update(load=load, compute_L=compute_L, comm_L=comm_L, gpu_bytes=gpu_bytes)
    return out


def check_against_simulation(res, ref, mode):
    np.testing.assert_array_equal(res.load_LG, ref["load"])
    np.testing.assert_array_equal(res.token_layers_L, ref["present"])
    L = res.num_layers
    z = np.zeros(L, dtype=np.int64)
    if mode == "ep":
        np.testing.assert_array_equal(res.remote_gpus_L, ref.get("remote_gpus", z))
        np.testing.assert_array_equal(res.remote_nodes_L, ref.get("remote_nodes", z))
    else:
        for name in ("messages", "node_messages", "pair_hops", "node_pair_hops", "pair_tokens"):
            np.testing.assert_array_equal(getattr(res, f"{name}_L1"), ref.get(name, z)[1:], err_msg=name)
        for name in ("entry", "node_entry", "exit", "node_exit"):
            attr = name.replace("entry", "entry_messages").replace("exit", "exit_messages")
            assert getattr(res, attr) == ref.get(name, z).sum(), name
    np.testing.assert_array_equal(res.intra_bytes_L, ref.get("intra_bytes", z))
    np.testing.assert_array_equal(res.inter_bytes_L, ref.get("inter_bytes", z))
    np.testing.assert_array_equal(res.intra_bytes_G, ref["gpu_bytes"]["intra"])
    np.testing.assert_array_equal(res.inter_bytes_G, ref["gpu_bytes"]["inter"])
    np.testing.assert_allclose(res.compute_us_L, ref["compute_L"], rtol=1e-12)
    np.testing.assert_allclose(res.comm_us_L, ref["comm_L"], rtol=1e-12)


def synth_batch(layers=4, experts=8, top_k=3, tokens=500, seed=0, drop_rate=0.1, seq_len=37, **kw) -> RoutingBatch:
    cfg = SynthConfig(layers=layers, experts=experts, top_k=top_k, tokens=tokens, seed=seed, drop_rate=drop_rate,
                      seq_len=seq_len, **kw)
    _, batches = generate(cfg)
    return concat_batches(list(batches))


def random_placement(L, E, G, N=1, redundant=0, seed=0) -> Placement:
    rng = np.random.default_rng(seed)
    P = E + redundant
    rows = [rng.permutation(np.arange(P) % E) for _ in range(L)]
    return Placement(rows, num_gpus=G, num_experts=E, num_nodes=N, report=SolveReport(solver=f"random{seed}"))


# ---------------------------------------------------------------------------------------------------
# A worked example, checked by hand
# ---------------------------------------------------------------------------------------------------


def hand_example():
    # 4 GPUs in 2 nodes (GPUs 0, 1 on node 0; 2, 3 on node 1); expert e on GPU e in both layers.
    p = Placement([[0, 1, 2, 3], [0, 1, 2, 3]], num_gpus=4, num_experts=4, num_nodes=2)
    # One token of sequence 0 (home GPU 0): experts 0, 2, 3 at layer 0 and 1, 2, 0 at layer 1.
    b = RoutingBatch(experts_TLK=np.array([[[0, 2, 3], [1, 2, 0]]], dtype=np.uint8), seq_T=np.array([0]))
    return p, b


def test_hand_example_ep():
    p, b = hand_example()
    topo = preset(4, 2, hidden_size=1000, dtype_bytes=1)  # 1000-byte tokens
    res = evaluate_trace(b, p, topo, mode="ep")
    # Layer 0: S = {0, 2, 3}; remote GPUs 2 and 3, both on node 1: one network message to GPU 2 (the arrival
    # GPU), forwarded to GPU 3 over NVLink; combine is the reverse. Layer 1: S = {0, 1, 2}; GPU 1 in the home
    # node, GPU 2 alone on node 1.
    np.testing.assert_array_equal(res.remote_gpus_L, [2, 2])
    np.testing.assert_array_equal(res.remote_nodes_L, [1, 1])
    np.testing.assert_array_equal(res.inter_bytes_L, [2 * 1000, 2 * 1000])
    np.testing.assert_array_equal(res.intra_bytes_L, [2 * 1000, 2 * 1000])
    # Sent: GPU 0 dispatches (1 inter at each layer, 1 intra at layer 1); GPU 2 forwards at layer 0 and sends
    # both combines over the network; GPU 3 combines to GPU 2 over NVLink; GPU 1 combines home at layer 1.
    np.testing.assert_array_equal(res.inter_bytes_G, [2000, 0, 2000, 0])
    np.testing.assert_array_equal(res.intra_bytes_G, [1000, 1000, 1000, 1000])
    np.testing.assert_array_equal(res.load_LG, [[1, 0, 1, 1], [1, 1, 1, 0]])
    assert res.remote_gpus_per_token == 2.0 and res.remote_nodes_per_token == 1.0
    # Time: each layer's compute is one expert's floor (75 us); dispatch and combine each cost the slowest
    # GPU's 1000 bytes over the network: 1000 B / 50 GB/s = 0.02 us + 10 us latency.
    np.testing.assert_allclose(res.compute_us_L, [75.0, 75.0])
    np.testing.assert_allclose(res.comm_us_L, [2 * 10.02, 2 * 10.02])
    assert res.total_us == pytest.approx(2 * (75 + 20.04))


def test_hand_example_coherent():
    p, b = hand_example()
    res = evaluate_trace(b, p, preset(4, 2), mode="coherent")
    # S_0 = {0, 2, 3} -> S_1 = {0, 1, 2}: 3 x 3 - |{0, 2}| = 7 messages; on different nodes: 0->2, 2->0, 2->1,
    # 3->0, 3->1 = 5. Rank pairs (3 x 3 = 9) minus the two on one GPU (0->0, 2->2) = 7 pair hops, 5 across nodes.
    np.testing.assert_array_equal(res.messages_L1, [7])
    np.testing.assert_array_equal(res.node_messages_L1, [5])
    np.testing.assert_array_equal(res.pair_hops_L1, [7])
    np.testing.assert_array_equal(res.node_pair_hops_L1, [5])
    # Entry: home 0 sends to GPUs 2 and 3 (both on node 1); exit: GPUs 1 and 2 return home (2 across nodes).
    assert (res.entry_messages, res.node_entry_messages, res.exit_messages, res.node_exit_messages) == (2, 2, 2, 1)
    tb = preset(4, 2).token_bytes
    # Layer 0 receives the entry (2 inter); layer 1 the 7 messages (5 inter) and sends the exit (1 intra, 1 inter).
    np.testing.assert_array_equal(res.inter_bytes_L, [2 * tb, 6 * tb])
    np.testing.assert_array_equal(res.intra_bytes_L, [0, 3 * tb])


def test_replica_rule_in_the_cost_model():
    # Expert 0 has replicas on slots 0 (GPU 0) and 2 (GPU 1): token t uses replica t mod 2.
    p = Placement([[0, 1, 0, 2]], num_gpus=2, num_experts=3)
    b = RoutingBatch(experts_TLK=np.array([[[0]], [[0]], [[0]], [[1]]], dtype=np.uint8), seq_T=np.array([0, 0, 0, 0]))
    res = evaluate_trace(b, p, preset(2), mode="ep")
    np.testing.assert_array_equal(res.load_LG, [[3, 1]])  # tokens 0, 2 on slot 0; token 1 on slot 2; token 3: e1
    np.testing.assert_array_equal(res.remote_gpus_L, [1])  # only token 1 leaves home GPU 0


# ---------------------------------------------------------------------------------------------------
# The fast path against the simulation
# ---------------------------------------------------------------------------------------------------

CASES = [  # gpus, nodes, redundant
    (4, 1, 0),
    (4, 1, 4),
    (4, 2, 0),
    (4, 2, 4),
    (8, 4, 8),
]


@pytest.mark.parametrize("mode", ["ep", "coherent"])
@pytest.mark.parametrize("gpus, nodes, redundant", CASES)
def test_fast_path_equals_simulation(mode, gpus, nodes, redundant):
    batch = synth_batch(seed=gpus + nodes + redundant)
    p = random_placement(4, 8, gpus, nodes, redundant, seed=redundant)
    topo = preset(gpus, nodes, hidden_size=512, expert_ffn_size=256, expert_floor_us=5.0, expert_tflops=1e-3)
    for step in (None, 64):
        res = evaluate_trace(batch, p, topo, mode=mode, tokens_per_step=step)
        check_against_simulation(res, simulate(batch, p, topo, mode, step), mode)


@pytest.mark.parametrize("mode", ["ep", "coherent"])
def test_streaming_in_batches_equals_one_batch(mode):
    batch = synth_batch(tokens=700, seed=3)
    p = random_placement(4, 8, 4, 2, 4, seed=1)
    topo = preset(4, 2)
    whole = evaluate_trace(batch, p, topo, mode=mode, tokens_per_step=100)
    ev = TraceEvaluator(p, topo, mode, tokens_per_step=100)
    for s in range(0, 700, 33):  # batch edges cut steps in the middle
        ev.add(RoutingBatch(batch.experts_TLK[s:s + 33], present_TL=batch.present_TL[s:s + 33],
                            seq_T=batch.seq_T[s:s + 33]))
    parts = ev.result()
    assert parts.steps == whole.steps == 7
    assert parts.to_dict() == whole.to_dict()


def test_invariants_and_identities():
    batch = synth_batch(layers=5, experts=12, top_k=4, tokens=900, seed=5)
    stats = compute_stats([batch], 5, 12, 4)
    p = random_placement(5, 12, 4, 2, 0, seed=7)
    res = evaluate_trace(batch, p, preset(4, 2), mode="coherent")
    # Loads add up to the trace: K entries per present token-layer, and equal the stats' loads per GPU.
    np.testing.assert_array_equal(res.load_LG.sum(1), res.token_layers_L * 4)
    np.testing.assert_array_equal(res.token_layers_L, stats.tokens_L)
    np.testing.assert_allclose(res.load_LG, p.gpu_load_LG(stats.load_LE))
    # Pair hops are linear in the transition counts (placements without redundant copies).
    hops, node_hops = pair_hops_from_trans(stats.trans_LEE, p)
    np.testing.assert_array_equal(res.pair_hops_L1, hops)
    np.testing.assert_array_equal(res.node_pair_hops_L1, node_hops)
    np.testing.assert_array_equal(res.pair_tokens_L1, stats.pair_tokens_L)
    # Messages never exceed pair hops; cross-node never exceeds cross-GPU.
    assert (res.messages_L1 <= res.pair_hops_L1).all() and (res.node_messages_L1 <= res.messages_L1).all()
    # The step size changes the time estimate only.
    steps = evaluate_trace(batch, p, preset(4, 2), mode="coherent", tokens_per_step=128)
    np.testing.assert_array_equal(steps.messages_L1, res.messages_L1)
    assert steps.steps == 8 and res.steps == 1


def test_top1_messages_equal_pair_hops():
    batch = synth_batch(top_k=1, tokens=400, seed=2)
    p = random_placement(4, 8, 4, 1, 0, seed=3)
    res = evaluate_trace(batch, p, preset(4), mode="coherent")
    np.testing.assert_array_equal(res.messages_L1, res.pair_hops_L1)
    assert res.pair_hops_L1.sum() > 0


def test_one_gpu_has_no_traffic():
    batch = synth_batch(tokens=200)
    p = Placement([list(range(8))] * 4, num_gpus=1, num_experts=8)
    for mode in ("ep", "coherent"):
        res = evaluate_trace(batch, p, preset(1), mode=mode)
        assert res.intra_bytes_L.sum() == res.inter_bytes_L.sum() == 0
        assert (res.comm_us_L == 0).all() and res.imbalance_L.tolist() == [1.0] * 4


def test_evaluate_many_and_speedups_and_json():
    batch = synth_batch(tokens=300)
    a = random_placement(4, 8, 4, 1, 0, seed=1)
    b = random_placement(4, 8, 4, 1, 0, seed=2)
    ra, rb = evaluate_many(batch, [a, b], preset(4), mode="ep", names=["a", "b"])
    assert ra.to_dict() == evaluate_trace(batch, a, preset(4), name="a").to_dict()
    with_speedups([ra, rb], ra)
    assert ra.speedup == 1.0 and rb.speedup == pytest.approx(ra.total_us / rb.total_us)
    d = rb.to_dict()
    assert d["name"] == "b" and d["summary"]["speedup"] == rb.speedup
    assert d["load"]["max_over_mean_L"] == pytest.approx(rb.imbalance_L.tolist())
    assert len(d["time_us"]["layer_L"]) == 4 and d["time_us"]["total"] == pytest.approx(rb.total_us)


def test_evaluate_load_by_hand():
    p = Placement([[0, 1, 2, 3, 0, 1]], num_gpus=2, num_experts=4)  # GPU 0: 0, 1, 2; GPU 1: 3, 0, 1
    res = evaluate_load(np.array([[10, 4, 1, 5]]), p)
    # Experts 0 and 1 split evenly across both GPUs: GPU 0 = 5 + 2 + 1 = 8, GPU 1 = 5 + 5 + 2 = 12.
    np.testing.assert_allclose(res.load_LG, [[8, 12]])
    assert res.imbalance_L[0] == pytest.approx(12 / 10) and res.balance_only
    assert "only load balance" in res.to_dict()["note"] and "time_us" not in res.to_dict()


def test_mismatches_name_the_values():
    batch = synth_batch(tokens=50)
    with pytest.raises(ValueError, match=r"the trace has 4 layers, the placement 3"):
        evaluate_trace(batch, random_placement(3, 8, 4), preset(4))
    with pytest.raises(ValueError, match=r"the trace routes to expert \d, the placement has 6 experts"):
        evaluate_trace(batch, random_placement(4, 6, 2), preset(2))
    with pytest.raises(ValueError, match=r"topology has 8 GPUs in 1 nodes, the placement 4 GPUs in 1 nodes"):
        evaluate_trace(batch, random_placement(4, 8, 4), preset(8))
    with pytest.raises(ValueError, match=r"placement has 4 layers x 8 experts, the load matrix 2 layers x 8"):
        evaluate_load(np.ones((2, 8)), random_placement(4, 8, 4))
    with pytest.raises(ValueError, match="needs each token's sequence id"):
        evaluate_trace(RoutingBatch(batch.experts_TLK), random_placement(4, 8, 4), preset(4))
    with pytest.raises(ValueError, match=r"tokens per step \(0\) must be positive"):
        TraceEvaluator(random_placement(4, 8, 4), preset(4), tokens_per_step=0)


def test_quantities_measure_the_evaluated_figures():
    from placer.core.objective import Quantity

    batch = synth_batch(tokens=300)
    p = random_placement(4, 8, 4, 2, 0, seed=4)
    ep = evaluate_trace(batch, p, preset(4, 2), mode="ep")
    co = evaluate_trace(batch, p, preset(4, 2), mode="coherent")
    assert Quantity.COHERENT_PAIR_HOPS.measure(co) == co.pair_hops_L1.sum()
    assert Quantity.EP_REMOTE_GPUS.measure(ep) == ep.remote_gpus_L.sum()
    assert Quantity.MAX_LOAD.measure(ep) == ep.load_LG.max(1).sum() == Quantity.MAX_LOAD.measure(co)
    assert Quantity.COHERENT_PAIR_HOPS.measure(ep) is None  # another traffic model
    bal = evaluate_load(np.ones((4, 8)), p)
    assert Quantity.MAX_LOAD.measure(bal) == 4 * 2.0 and Quantity.TIME_US.measure(bal) is None
    solver_only = {Quantity.MOETUNER_MAX_LINK_US, Quantity.EXFLOW_HOPS, Quantity.EXFLOW_HOPS_TOP1}
    for q in Quantity:
        value = q.measure(ep if q.mode in (None, "ep") else co)
        assert (value is None) == (q in solver_only), q
