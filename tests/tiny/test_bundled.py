"""The bundled tiny MoE model and its traces: what the brief asks of them, measured."""

from __future__ import annotations

import numpy as np
import pytest

from placer.tiny import BUNDLED_MODEL_DIR, REPO_TRACES_DIR
from placer.tiny.checks import routing_report
from placer.core.trace.reader import read_trace

TEXTS = REPO_TRACES_DIR / "text"


def test_bundled_model_loads_offline_and_has_the_required_shape():
    import torch
    from transformers import AutoModelForCausalLM

    weights = BUNDLED_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    model = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL_DIR, local_files_only=True)
    cfg = model.config
    assert cfg.model_type in ("qwen3_moe", "mixtral")
    assert cfg.num_hidden_layers >= 8 and not cfg.mlp_only_layers and cfg.decoder_sparse_step == 1
    assert cfg.num_experts >= 16 and cfg.num_experts_per_tok >= 2
    assert cfg.vocab_size == 259  # bytes + 3 specials: no tokenizer to download
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (BUNDLED_MODEL_DIR / "byte_tokenizer.json").is_file()
    card = (BUNDLED_MODEL_DIR / "README.md").read_text()
    assert "moeplace train-tiny" in card and "router_aux_loss_coef" in card


def test_the_model_predicts_text_better_than_chance():
    """Next-byte loss on held-out text far below a uniform guess over bytes (ln 256 = 5.55 nats)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL_DIR, local_files_only=True).eval()
    ids = torch.tensor(list((TEXTS / "heldout.txt").read_bytes()[:1024])).view(4, 256)
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)
    assert loss < 2.5


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_bundled_traces(split):
    meta, b = read_trace(REPO_TRACES_DIR / f"{split}.parquet")
    assert meta.source == "moeplace trace" and meta.model_name == "tiny-moe" and meta.model_family == "qwen3_moe"
    assert meta.extra["text"][-1].endswith(f"text/{split}.txt")
    n = (TEXTS / f"{split}.txt").read_bytes()
    prefill = b.phase_T == 0
    assert bytes(b.token_T[prefill].astype(np.uint8).tolist()) == n  # the whole text, in order
    assert 2000 <= prefill.sum() <= 10000 and (~prefill).sum() >= 200


def test_trace_texts_are_disjoint():
    a, b = (TEXTS / "train.txt").read_text(), (TEXTS / "heldout.txt").read_text()
    windows = {a[i : i + 80] for i in range(0, len(a) - 80)}
    assert not any(b[i : i + 80] in windows for i in range(0, len(b) - 80))


def test_routing_is_learned_on_held_out_text():
    """Adjacent layers' top-1 experts share >= 0.1 bits more information than the shuffled-token control,
    and no layer sends more than 3x its fair share of tokens to one expert (held-out trace).

    An untrained model of the same config also routes by token identity, so its MI gap is positive too
    (about 0.47 bits here) but its load is unbalanced (over 4x): training must beat it on both, by a
    margin, for the routing to count as learned."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from placer.tracer.adapters import adapter_for, moe_routers
    from placer.tracer.record import RouterRecorder, TraceOptions, trace_batches

    meta, b = read_trace(REPO_TRACES_DIR / "heldout.parquet")
    rep = routing_report(b.experts_TLK, meta.num_experts, seed=0)
    assert rep["tokens"] >= 3000
    assert rep["mi_gap_bits"] >= 0.1, rep
    assert rep["max_share_over_fair"] <= 3.0, rep

    torch.manual_seed(0)
    untrained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BUNDLED_MODEL_DIR)).eval()
    data = (TEXTS / "heldout.txt").read_bytes()
    seqs = [list(data[i : i + 224]) for i in range(0, len(data), 224)]
    adapter = adapter_for("qwen3_moe")
    with RouterRecorder([r for _, r in moe_routers(untrained, adapter)], 1, 2) as rec:
        ex = np.concatenate([x.experts_TLK for x in trace_batches(untrained, rec, seqs, TraceOptions(batch_size=8), 256)])
    base = routing_report(ex, meta.num_experts, seed=0)
    assert rep["mi_gap_bits"] >= 2 * base["mi_gap_bits"], (rep, base)
    assert base["max_share_over_fair"] > rep["max_share_over_fair"] + 1.0, (rep, base)


def test_committed_traces_are_those_of_the_committed_model(tmp_path):
    """Re-tracing the start of the held-out text reproduces the committed trace's rows (stale traces fail)."""
    from placer.tracer.record import TraceOptions
    from placer.tracer.run import trace_model

    meta, committed = read_trace(REPO_TRACES_DIR / "heldout.parquet")
    text = tmp_path / "head.txt"
    text.write_bytes((TEXTS / "heldout.txt").read_bytes()[:512])
    res = trace_model(BUNDLED_MODEL_DIR, [text], tmp_path / "t.parquet",
                      TraceOptions(seq_len=meta.extra["seq_len"], batch_size=2))
    _, fresh = read_trace(res.path)
    same = (fresh.experts_TLK == committed.experts_TLK[: len(fresh)]).all(axis=(1, 2))
    assert same.mean() >= 0.99


def test_demo_starts_by_tracing_the_bundled_model(tmp_path):
    from rich.console import Console

    from placer.demo import STEPS, DemoContext

    name, step = STEPS[0]
    assert name == "trace"
    ctx = DemoContext(out=tmp_path, console=Console(file=open(tmp_path / "log.txt", "w")))
    step(ctx)
    meta, b = read_trace(ctx.files["trace"])
    assert meta.model_name == "tiny-moe" and meta.source == "moeplace trace"
    assert 0 < (b.phase_T == 0).sum() <= 512 and (b.phase_T == 1).sum() > 0
    assert ctx.files["train"].is_file() and ctx.files["heldout"].is_file()
