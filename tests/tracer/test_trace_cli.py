"""``moeplace trace`` end to end on a tiny saved model, and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from placer.core.trace.reader import read_trace
from tests.conftest import assert_one_line_error
from tests.tracer.tiny_models import tiny_model

TEXT = "def add(a, b):\n    return a + b  # sum\n\nThe quick brown fox jumps over the lazy dog.\n" * 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Qwen3-MoE (4 layers, MoE at 1 and 3, 8 experts, top-3) saved with the byte vocabulary."""
    from placer.tiny.vocab import ByteCodec

    d = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_model("qwen3_moe").save_pretrained(d)
    ByteCodec().save(d)
    return d


def test_trace_writes_prefill_and_decode_with_metadata(cli, model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "t.parquet"
    res = cli("trace", "--model", model_dir, "--text", text, "--out", out, "--seq-len", "40", "--batch-size", "2",
              "--generate", "3")
    assert res.code == 0, res.err
    meta, b = read_trace(out)
    n = len(TEXT.encode())
    seqs = -(-n // 40)
    assert meta.model_family == "qwen3_moe" and meta.source == "moeplace trace"
    assert meta.shape == (2, 8, 3) and meta.moe_layer_indices == (1, 3)
    assert meta.extra["seq_len"] == 40 and meta.extra["device"] == "cpu" and meta.extra["text"] == [str(text)]
    prefill = b.phase_T == 0
    assert prefill.sum() == n and (~prefill).sum() == 3 * seqs
    # Prefill rows are the text's bytes, sequence by sequence, position by position.
    assert bytes(b.token_T[prefill].astype(np.uint8).tolist()) == TEXT.encode()
    lens = [min(40, n - 40 * i) for i in range(seqs)]
    np.testing.assert_array_equal(b.seq_T[prefill], np.repeat(np.arange(seqs), lens))
    # Each sequence's decode tokens follow its prompt: positions len, len+1, len+2.
    for s in range(seqs):
        dec = (~prefill) & (b.seq_T == s)
        np.testing.assert_array_equal(np.sort(b.position_T[dec]), lens[s] + np.arange(3))
    assert "prefill" in res.out and "decode" in res.out


def test_jsonl_prompts_and_max_tokens(cli, model_dir, tmp_path):
    text = tmp_path / "p.data"
    text.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(["abc", "hello world", "xyz"])))
    out = tmp_path / "p.parquet"
    res = cli("trace", "--model", model_dir, "--text", text, "--text-field", "prompt", "--out", out,
              "--max-tokens", "10")
    assert res.code == 0, res.err
    _, b = read_trace(out)
    # Prompts are separate sequences; the budget cuts the second one after 7 tokens.
    np.testing.assert_array_equal(b.seq_T, [0, 0, 0] + [1] * 7)
    assert bytes(b.token_T.astype(np.uint8).tolist()) == b"abchello w"


def test_the_bundled_model_is_the_default(cli, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("import os\n")
    out = tmp_path / "t.parquet"
    res = cli("trace", "--text", text, "--out", out)
    assert res.code == 0, res.err
    meta, b = read_trace(out)
    assert meta.model_name == "tiny-moe" and meta.num_layers >= 8 and meta.num_experts >= 16 and len(b) == 10


def _write_config(d, cfg: dict):
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("some text")
    return p


def test_missing_model_folder(cli, tmp_path, text_file):
    res = cli("trace", "--model", tmp_path / "nope", "--text", text_file, "--out", tmp_path / "o.parquet")
    assert_one_line_error(res, 2, "nope", "model folder not found")


def test_folder_without_config(cli, tmp_path, text_file):
    (tmp_path / "empty").mkdir()
    res = cli("trace", "--model", tmp_path / "empty", "--text", text_file, "--out", tmp_path / "o.parquet")
    assert_one_line_error(res, 2, "empty", "no config.json")


def test_dense_model_is_refused(cli, tmp_path, text_file):
    d = _write_config(tmp_path / "llama", {"model_type": "llama", "hidden_size": 8})
    res = cli("trace", "--model", d, "--text", text_file, "--out", tmp_path / "o.parquet")
    assert_one_line_error(res, 2, "model_type 'llama'", "not an MoE model", "Mixtral (mixtral)", "GPT-OSS")


def test_unsupported_moe_family_lists_the_supported_ones(cli, tmp_path, text_file):
    d = _write_config(tmp_path / "jet", {"model_type": "jetmoe", "num_local_experts": 8})
    res = cli("trace", "--model", d, "--text", text_file, "--out", tmp_path / "o.parquet")
    assert_one_line_error(res, 2, "model_type 'jetmoe' is not a supported MoE family", "Qwen3-MoE (qwen3_moe)",
                          "DeepSeek-V3 (deepseek_v3)", "placer/tracer/adapters.py")


def test_model_without_moe_layers(cli, tmp_path, text_file):
    from placer.tiny.vocab import ByteCodec
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(vocab_size=300, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2,
                         mlp_only_layers=[0, 1])
    d = tmp_path / "dense-qwen2"
    Qwen2MoeForCausalLM(cfg).save_pretrained(d)
    ByteCodec().save(d)
    res = cli("trace", "--model", d, "--text", text_file, "--out", tmp_path / "o.parquet")
    assert_one_line_error(res, 2, "no MoE layer", "Qwen2MoeTopKRouter", "nothing to trace")


def test_empty_text_file_leaves_the_old_output_untouched(cli, model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    out = tmp_path / "o.parquet"
    out.write_bytes(b"precious")
    res = cli("trace", "--model", model_dir, "--text", empty, "--out", out)
    assert_one_line_error(res, 2, "empty.txt", "empty text file")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "o.parquet"]


def test_bad_jsonl_line(cli, model_dir, tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"text": "ok"}\n{"txt": "wrong field"}\n')
    res = cli("trace", "--model", model_dir, "--text", p, "--out", tmp_path / "o.parquet")
    assert_one_line_error(res, 2, "p.jsonl: line 2: no field 'text'", "--text-field")
    assert not (tmp_path / "o.parquet").exists()


def test_cuda_without_cuda(cli, model_dir, tmp_path, text_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "o.parquet"
    res = cli("trace", "--model", model_dir, "--text", text_file, "--out", out, "--device", "cuda")
    assert_one_line_error(res, 2, "--device cuda", "CUDA is not available", "--device cpu")
    assert not out.exists()


def test_bad_options(cli, model_dir, tmp_path, text_file):
    res = cli("trace", "--model", model_dir, "--text", text_file, "--out", tmp_path / "o.parquet", "--seq-len", "0")
    assert_one_line_error(res, 2, "--seq-len must be >= 1, got 0")
    res = cli("trace", "--model", model_dir, "--text", text_file, "--out", tmp_path / "o.parquet", "--dtype", "fp8")
    assert_one_line_error(res, 2, "--dtype must be one of", "fp8")


@pytest.mark.gpu
def test_trace_on_cuda_matches_cpu(cli, model_dir, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    outs = {}
    for dev in ("cpu", "cuda"):
        outs[dev] = tmp_path / f"{dev}.parquet"
        assert cli("trace", "--model", model_dir, "--text", text, "--out", outs[dev], "--device", dev,
                   "--dtype", "float32").code == 0
    a, b = read_trace(outs["cpu"])[1], read_trace(outs["cuda"])[1]
    assert (a.experts_TLK == b.experts_TLK).mean() > 0.99
