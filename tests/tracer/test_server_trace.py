"""``moeplace trace --server`` and ``moeplace import --format *-routed`` against local fake servers.

The fakes (placer/tracer/engines/fake.py) validate requests and build responses as vLLM 0.33.0 and SGLang
0.5.23 do (vllm/entrypoints/openai/completion/{protocol,serving}.py, vllm/utils/serial_utils.py; sglang/srt/
entrypoints/openai/serving_completions.py, sglang/srt/managers/detokenizer_manager.py) and TensorRT-LLM's
OpenAI server refuses (NVIDIA/TensorRT-LLM main branch, tensorrt_llm/serve/openai_protocol.py at commit
0076e939). They keep what they served, so every test compares the trace with the routing the server sent.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from placer.core.trace.reader import read_trace
from placer.tracer.engines.fake import FakeModel, FakeServer
from placer.tracer.server import ServerOptions, trace_server
from tests.conftest import assert_one_line_error

MODEL = FakeModel()  # 6 decoder layers, MoE layers 1-5 (DeepSeek-style dense layer 0), 16 experts, top-2
PROMPTS = ["the quick brown fox", "jumps over", "the lazy dog [eos:2]", "a b c d e f g", "hello"]
SHAPE = {"vllm": [], "sglang": ["--num-layers", "6", "--top-k", "2"]}


@pytest.fixture
def files(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"text": t, "dom": "code" if i % 2 else "chat"})
                                 for i, t in enumerate(PROMPTS)) + "\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(MODEL.config()))
    return prompts, cfg


def assert_trace_is_what_was_served(path, served, prompts, generate):
    meta, b = read_trace(path)
    assert meta.shape == (5, 16, 2) and meta.moe_layer_indices == (1, 2, 3, 4, 5)
    for seq, prompt in enumerate(prompts):
        sv = served[prompt]
        rows = b.seq_T == seq
        order = np.argsort(b.position_T[rows])
        np.testing.assert_array_equal(b.experts_TLK[rows][order], sv.experts_TLK)
        np.testing.assert_array_equal(b.position_T[rows][order], np.arange(len(sv.experts_TLK)))
        np.testing.assert_array_equal(b.phase_T[rows][order], np.arange(len(sv.experts_TLK)) >= sv.prompt_tokens)
        np.testing.assert_array_equal(b.token_T[rows][order], sv.token_ids[:len(sv.experts_TLK)])
        assert sv.completion_tokens == (min(2, generate + 1) if "[eos:2]" in prompt else generate + 1)
    return meta, b


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_trace_equals_the_routing_served(cli, files, tmp_path, engine):
    prompts, cfg = files
    out = tmp_path / "t.parquet"
    with FakeServer(engine, MODEL) as srv:
        res = cli("trace", "--server", srv.url, "--engine", engine, "--text", prompts, "--out", out,
                  "--model-config", cfg, "--generate", "3", "--domain-field", "dom", "--concurrency", "2")
    assert res.code == 0, res.err
    meta, b = assert_trace_is_what_was_served(out, srv.served, PROMPTS, 3)
    # Every returned token is in: prompt tokens as prefill, generated tokens but the last as decode.
    words = [len(p.split()) for p in PROMPTS]
    assert (b.phase_T == 0).sum() == sum(words) and (b.phase_T == 1).sum() == 4 * 3 + 1
    np.testing.assert_array_equal(np.unique(b.domain_T[b.seq_T % 2 == 1]), [meta.extra["domain_names"].index("code")])
    assert meta.source == "moeplace trace --server" and meta.model_name == MODEL.name
    assert meta.model_family == "deepseek_v3"
    x = meta.extra
    assert (x["server"], x["engine"], x["served_model"]) == (srv.url, engine, MODEL.name)
    assert x["server_version"] == {"vllm": "0.33.0", "sglang": "0.5.23"}[engine]
    assert x["weights_from_source"] is False and x["wire_layers"] == 6 and x["moe_layers_from"].startswith("model config")
    # No gate weights on the wire: the column is left out (schema version 2) and reads as 1/K.
    assert meta.schema_version == 2 and np.all(b.weights_TLK == np.float32(np.float16(0.5)))
    assert "wrote" in res.out and "failed requests" in res.out


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_dense_layers_are_inferred_without_a_config(files, tmp_path, engine):
    prompts, _ = files
    shape = dict(num_layers=6, top_k=2) if engine == "sglang" else {}
    with FakeServer(engine, MODEL) as srv:
        res = trace_server(ServerOptions(srv.url, engine, concurrency=3), [prompts], tmp_path / "t.parquet",
                           num_experts=16, **shape)
    meta, _ = assert_trace_is_what_was_served(res.path, srv.served, PROMPTS, 0)
    assert meta.extra["moe_layers_from"].startswith("inferred")
    assert res.counts.decode_tokens == 0  # --generate 0 asks for 1 token, which is never run through the model
    assert res.max_held <= 3 + 1  # responses held at once: bounded by the requests in flight


def test_failed_slow_and_malformed_requests(cli, files, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # the summary table on one line per row
    prompts, cfg = files
    texts = ["ok one", "flaky [fail:1]", "broken [fail:9]", "garbled [malformed:1]", "slow [slow:0.3] x",
             "hiccup [norouting:1]"]
    prompts.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    out = tmp_path / "t.parquet"
    with FakeServer("vllm", MODEL) as srv:
        res = cli("trace", "--server", srv.url, "--engine", "vllm", "--text", prompts, "--out", out,
                  "--model-config", cfg, "--retries", "1", "--concurrency", "3", "--generate", "1")
        attempts = dict(srv.attempts)
    assert res.code == 0, res.err
    meta, b = read_trace(out)
    assert sorted(np.unique(b.seq_T)) == [0, 1, 3, 4, 5]  # the request that always fails is left out
    assert "p.jsonl:3: HTTP 500" in res.out and "after 2 attempts" in res.out
    assert attempts["broken [fail:9]"] == 2 and attempts["flaky [fail:1]"] == 2 and attempts["ok one"] == 1
    assert attempts["garbled [malformed:1]"] == 2 and attempts["hiccup [norouting:1]"] == 2
    for seq, text in enumerate(texts):
        if seq != 2:
            np.testing.assert_array_equal(b.experts_TLK[b.seq_T == seq], srv.served[text].experts_TLK)


def test_lines_without_the_domain_field_get_the_domain_unknown(cli, files, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    _, cfg = files
    lines = [{"text": "a b", "dom": "code"}, {"text": "c d e"}, {"text": "f", "dom": None}, {"text": "g h", "dom": "chat"}]
    prompts = tmp_path / "dom.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "t.parquet"
    with FakeServer("vllm", MODEL) as srv:
        res = cli("trace", "--server", srv.url, "--engine", "vllm", "--text", prompts, "--out", out,
                  "--model-config", cfg, "--domain-field", "dom")
    assert res.code == 0, res.err
    assert "2 prompts without field 'dom': domain 'unknown'" in res.out
    meta, b = read_trace(out)
    names = meta.extra["domain_names"]
    assert names == ["code", "unknown", "chat"] and meta.extra["prompts_without_domain"] == 2
    for seq, name in enumerate(["code", "unknown", "unknown", "chat"]):
        assert set(b.domain_T[b.seq_T == seq]) == {names.index(name)}


def test_every_failed_request_is_in_the_metadata(cli, files, tmp_path, monkeypatch):
    """The summary names five failures; the trace's metadata (extra.failed_requests) holds all seven."""
    monkeypatch.setenv("COLUMNS", "300")
    _, cfg = files
    texts = ["ok one"] + [f"broken{i} [fail:9]" for i in range(7)] + ["ok two"]
    prompts = tmp_path / "many.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "t.parquet"
    with FakeServer("vllm", MODEL) as srv:
        res = cli("trace", "--server", srv.url, "--engine", "vllm", "--text", prompts, "--out", out,
                  "--model-config", cfg, "--retries", "0", "--concurrency", "2")
    assert res.code == 0, res.err
    assert "... and 2 more (all 7 in the trace's metadata: extra.failed_requests)" in res.out
    meta, b = read_trace(out)
    failed = meta.extra["failed_requests"]
    assert sorted(f["prompt"] for f in failed) == [f"{prompts}:{n}" for n in range(2, 9)]
    assert all("HTTP 500" in f["reason"] for f in failed)
    assert meta.extra["interrupted"] is False and meta.extra["max_tokens_cut"] is None
    assert meta.extra["engine"] == "vllm"  # the metadata written when the file was opened is all still there
    np.testing.assert_array_equal(np.unique(b.seq_T), [0, 8])


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_max_tokens_is_spent_in_prompt_order_at_any_concurrency(files, tmp_path, engine):
    """The first prompt answers last (slow): the budget still goes to prompts 0, 1 and the first token of 2, as
    the local tracer cuts its last prompt, and the trace is the same at --concurrency 1 and 3."""
    _, cfg = files
    texts = ["first [slow:0.4] a b", "c d", "e f g h", "i j k l m n o", "p"]  # 4, 2, 4, 7, 1 tokens
    prompts = tmp_path / "slow.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    shape = dict(num_layers=6, top_k=2) if engine == "sglang" else {}
    traces = []
    for conc in (1, 3):
        with FakeServer(engine, MODEL) as srv:
            res = trace_server(ServerOptions(srv.url, engine, concurrency=conc, max_tokens=7, generate=2), [prompts],
                               tmp_path / f"t{conc}.parquet", model_config=cfg, **shape)
        _, b = read_trace(res.path)
        order = np.lexsort((b.position_T, b.seq_T))
        traces.append({k: getattr(b, k)[order] for k in ("experts_TLK", "seq_T", "position_T", "phase_T", "token_T")})
        assert (b.phase_T == 0).sum() == 7 and res.counts.prefill_tokens == 7
        assert res.cut == (f"{prompts}:3", 4, 1) and res.over_budget == 2  # prompts 3 and 4 are not traced
        assert res.meta.extra["max_tokens_cut"] == {"prompt": f"{prompts}:3", "prompt_tokens": 4, "kept": 1}
        t = traces[-1]
        for seq, rows in ((0, 4 + 2), (1, 2 + 2), (2, 1)):  # whole sequences (prompt + 2 decode), the cut one
            sv = srv.served[texts[seq]]
            mine = t["seq_T"] == seq
            np.testing.assert_array_equal(t["experts_TLK"][mine], sv.experts_TLK[:rows])
        assert not (t["phase_T"][t["seq_T"] == 2]).any()  # the cut prompt keeps no decode rows
    for k in traces[0]:
        np.testing.assert_array_equal(traces[0][k], traces[1][k])


def test_ctrl_c_keeps_complete_sequences(files, tmp_path):
    prompts, cfg = files
    calls = []

    @contextlib.contextmanager
    def progress(total):
        def advance(n, **kw):
            calls.append(n)
            if len(calls) == 3:
                raise KeyboardInterrupt

        yield advance

    out = tmp_path / "t.parquet"
    with FakeServer("vllm", MODEL) as srv:
        res = trace_server(ServerOptions(srv.url, "vllm", concurrency=1), [prompts], out, model_config=cfg,
                           progress=progress)
    assert res.interrupted and res.path == out and res.counts.sequences == 3
    _, b = read_trace(out)
    assert len(np.unique(b.seq_T)) == 3 and len(b) == res.counts.tokens


def test_ctrl_c_inside_a_sequences_hand_over_keeps_every_sequence(files, tmp_path, monkeypatch):
    """A real SIGINT that arrives while the sink hands rows to the writer waits until the sequence is in: the
    trace keeps every sequence added (it used to keep none)."""
    import signal

    import placer.tracer.routing as routing

    prompts, cfg = files
    monkeypatch.setattr(routing.RoutedSink.__init__, "__defaults__", (False, 1))  # hand over every sequence
    real, calls = routing.concat_batches, []

    def concat(parts):
        calls.append(len(parts))
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # Python would raise KeyboardInterrupt right here
        out = real(parts)
        assert len(calls) != 2 or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        return out

    monkeypatch.setattr(routing, "concat_batches", concat)
    out = tmp_path / "t.parquet"
    with FakeServer("vllm", MODEL) as srv:
        res = trace_server(ServerOptions(srv.url, "vllm", concurrency=1), [prompts], out, model_config=cfg)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert res.interrupted and res.path == out and res.counts.sequences == 2
    _, b = read_trace(out)
    np.testing.assert_array_equal(np.unique(b.seq_T), [0, 1])
    assert len(b) == res.counts.tokens


def test_ctrl_c_through_the_cli_exits_130(cli, files, tmp_path, monkeypatch):
    import placer.cli.trace

    monkeypatch.setenv("COLUMNS", "300")
    @contextlib.contextmanager
    def progress_bar(total, description, unit="it", quiet=None, status=False):
        def advance(n, **kw):
            raise KeyboardInterrupt

        yield advance

    monkeypatch.setattr(placer.cli.trace, "progress_bar", progress_bar)
    prompts, cfg = files
    out = tmp_path / "t.parquet"
    with FakeServer("vllm", MODEL) as srv:
        res = cli("trace", "--server", srv.url, "--engine", "vllm", "--text", prompts, "--out", out,
                  "--model-config", cfg, "--concurrency", "1")
    # typer turns Ctrl-C into exit code 130; the summary says what was kept
    assert res.code == 130 and "interrupted: wrote" in res.out and "(1 complete sequences" in res.out
    assert len(np.unique(read_trace(out)[1].seq_T)) == 1


# -- bad input: one line, exit code 2, nothing written ---------------------------------------------------------
@pytest.mark.parametrize("engine, kwargs, args, fragments", [
    ("vllm", {"capture": False}, [], ["no routing in the response", "--enable-return-routed-experts"]),
    ("sglang", {"capture": False}, SHAPE["sglang"], ["no 'sglext.routed_experts'", "--enable-return-routed-experts"]),
    ("trtllm", {}, [], ["refuses the option 'return_routed_experts'", "trtllm-routed"]),
    ("vllm", {}, ["--text-extra", "[topk+1] x"], ["layers x top-3", "layer count or top-k changed"]),
    ("sglang", {}, ["--num-layers", "5", "--top-k", "2"], ["check --num-layers"]),
    ("vllm", {}, ["--text-extra", "[badid] x y z"], ["expert id 16, outside [0, 16)"]),
    ("vllm", {}, ["--model", "nope"], ["HTTP 404", "The model `nope` does not exist."]),
])
def test_bad_server_input_is_one_line_exit_2(cli, files, tmp_path, engine, kwargs, args, fragments):
    prompts, _ = files
    args = list(args)
    if "--text-extra" in args:  # a prompt that makes the server misbehave, after good ones
        i = args.index("--text-extra")
        with prompts.open("a") as fh:
            fh.write(json.dumps({"text": args[i + 1]}) + "\n")
        del args[i:i + 2]
    out = tmp_path / "t.parquet"
    out.write_text("keep me")
    with FakeServer(engine, MODEL, **kwargs) as srv:
        res = cli("trace", "--server", srv.url, "--engine", engine, "--text", prompts, "--out", out,
                  "--num-experts", "16", "--concurrency", "1", *args)
    assert_one_line_error(res, 2, *fragments)
    assert out.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "p.jsonl",
                                                                                           "t.parquet"]


@pytest.mark.parametrize("args, fragments", [
    (["--engine", "tgi"], ["--engine: unknown engine 'tgi'"]),
    ([], ["--server needs --engine"]),
    (["--engine", "vllm", "--seq-len", "9"], ["--seq-len: only for a local model"]),
    (["--engine", "vllm", "--concurrency", "0"], ["--concurrency must be >= 1"]),
    (["--engine", "sglang", "--num-experts", "16"], ["SGLang sends routing without its shape"]),
    (["--engine", "vllm"], ["--num-experts (or --model-config config.json) is required"]),
    (["--engine", "vllm", "--num-experts", "99999999999999999999"],  # was refused only at the first answer
     ["--num-experts must be between 1 and 4,294,967,296"]),
])
def test_bad_options(cli, files, tmp_path, args, fragments):
    prompts, _ = files
    res = cli("trace", "--server", "http://127.0.0.1:9", "--text", prompts, "--out", tmp_path / "t.parquet", *args)
    assert_one_line_error(res, 2, *fragments)


def test_plain_text_is_refused(cli, tmp_path):
    (tmp_path / "doc.txt").write_text("one long document")
    res = cli("trace", "--server", "http://127.0.0.1:9", "--engine", "vllm", "--num-experts", "16",
              "--text", tmp_path / "doc.txt", "--out", tmp_path / "t.parquet")
    assert_one_line_error(res, 2, "doc.txt: --server sends JSONL prompts")


def test_server_options_without_server(cli, files, tmp_path):
    prompts, _ = files
    res = cli("trace", "--text", prompts, "--out", tmp_path / "t.parquet", "--engine", "vllm")
    assert_one_line_error(res, 2, "--engine: only with --server URL")


# -- layer numbering reaches export ----------------------------------------------------------------------------
def test_export_in_model_numbering_keeps_dense_first_layers(cli, files, tmp_path):
    prompts, cfg = files
    out = tmp_path / "t.parquet"
    with FakeServer("vllm", MODEL) as srv:
        assert cli("trace", "--server", srv.url, "--engine", "vllm", "--text", prompts, "--out", out,
                   "--model-config", cfg).code == 0
    assert cli("solve", out, "--gpus", "2", "--solver", "contiguous", "--out", tmp_path / "p.json").code == 0
    res = cli("export", tmp_path / "p.json", "--format", "sglang", "--out", tmp_path / "s.json")
    assert res.code == 0, res.err
    rows = json.loads((tmp_path / "s.json").read_text())["physical_to_logical_map"]
    assert len(rows) == 6 and rows[0] == list(range(16))  # decoder layer 0 is dense: the trivial row


# -- offline import of saved outputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_import_saved_response_bodies(cli, files, tmp_path, engine):
    """Saved bodies (one JSON per line) convert to the trace the live run writes."""
    import http.client
    from urllib.parse import urlsplit

    from placer.tracer.engines import ENGINES

    prompts, cfg = files
    log = tmp_path / "responses.jsonl"
    with FakeServer(engine, MODEL) as srv:
        u = urlsplit(srv.url)
        conn = http.client.HTTPConnection(u.hostname, u.port)
        lines = []
        for p in PROMPTS:
            conn.request("POST", "/v1/completions", json.dumps(ENGINES[engine].request(p, MODEL.name, 3)))
            lines.append(conn.getresponse().read().decode())
        conn.close()
        lines.insert(2, json.dumps({"choices": [{"index": 0, "text": "", "routed_experts": None}]}))  # aborted
        log.write_text("\n".join(lines) + "\n")
        res = cli("import", log, "--format", f"{engine}-routed", "--model-config", cfg, "--out", tmp_path / "i.parquet")
    assert res.code == 0, res.err
    assert "1 records without routing skipped" in res.out
    meta, _ = assert_trace_is_what_was_served(tmp_path / "i.parquet", srv.served, PROMPTS, 2)
    assert meta.source.startswith(f"import:{engine}-routed") and meta.extra["import"]["weights_from_source"] is False


@pytest.mark.parametrize("engine", ["vllm", "trtllm"])
def test_import_torch_records_of_offline_outputs(cli, files, tmp_path, engine):
    """vLLM's CompletionOutput.routed_experts counts every decoder layer (uint8); TensorRT-LLM's the MoE layers
    only (int16, NVIDIA/TensorRT-LLM tensorrt_llm/_torch/route_capture.py ``assemble`` at commit 06a976ce)."""
    import torch

    from placer.tracer.engines.fake import fake_routing

    prompts, cfg = files
    records, expect = [], []
    for i, p in enumerate(PROMPTS):
        P, C = len(p.split()), 3
        moe = fake_routing(p, P + C - 1, MODEL)
        if engine == "vllm":
            wire = np.zeros((P + C - 1, 6, 2), np.uint8)
            wire[:, 1:] = moe
            routes = torch.from_numpy(wire)
        else:
            routes = torch.from_numpy(moe.astype(np.int16))
        records.append({"prompt_token_ids": list(range(P)), "token_ids": torch.arange(C), "routed_experts": routes})
        expect.append(moe)
    torch.save(records, tmp_path / "outs.pt")
    res = cli("import", tmp_path / "outs.pt", "--format", f"{engine}-routed", "--model-config", cfg,
              "--out", tmp_path / "i.parquet")
    assert res.code == 0, res.err
    meta, b = read_trace(tmp_path / "i.parquet")
    assert meta.moe_layer_indices == (1, 2, 3, 4, 5)
    for seq, moe in enumerate(expect):
        np.testing.assert_array_equal(b.experts_TLK[b.seq_T == seq], moe)
        assert (b.phase_T[b.seq_T == seq] == 0).sum() == len(PROMPTS[seq].split())


def _fake_vllm_outputs(tmp_path, monkeypatch, n_outputs=1):
    """``torch.save(llm.generate(...))`` without vLLM: stand-ins named as vllm 0.33.0 names its classes
    (vllm/outputs.py: ``RequestOutput(request_id, prompt, prompt_token_ids, prompt_logprobs, outputs, finished,
    metrics, ...)`` and the dataclass ``CompletionOutput(index, text, token_ids, cumulative_logprob, logprobs,
    routed_experts [seq_len, layer_num, topk] np.ndarray, finish_reason, ...)``; metrics
    ``vllm.v1.metrics.stats.RequestStateStats``), pickled under vLLM's module names, which are gone again
    when moeplace reads the file."""
    import dataclasses
    import enum
    import sys
    import types

    import torch

    from placer.tracer.engines.fake import fake_routing

    outputs_mod, stats_mod = types.ModuleType("vllm.outputs"), types.ModuleType("vllm.v1.metrics.stats")

    @dataclasses.dataclass
    class CompletionOutput:
        index: int
        text: str
        token_ids: list
        cumulative_logprob: float | None
        logprobs: list | None
        routed_experts: np.ndarray | None = None
        finish_reason: str | None = None

    class RequestOutput:
        def __init__(self, request_id, prompt, prompt_token_ids, prompt_logprobs, outputs, finished, metrics=None):
            self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
            self.prompt_logprobs, self.outputs, self.finished, self.metrics = prompt_logprobs, outputs, finished, metrics

    @dataclasses.dataclass
    class RequestStateStats:
        num_generation_tokens: int = 0
        kind: "Kind | None" = None

    class Kind(enum.Enum):  # an enum pickles through its class (REDUCE), unlike the dataclasses
        FINAL = 1

    for mod, classes in ((outputs_mod, (CompletionOutput, RequestOutput)), (stats_mod, (RequestStateStats, Kind))):
        for cls in classes:
            cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
            setattr(mod, cls.__name__, cls)
    expect, outs = [], []
    with monkeypatch.context() as m:
        for name, mod in (("vllm", types.ModuleType("vllm")), ("vllm.outputs", outputs_mod),
                          ("vllm.v1.metrics.stats", stats_mod)):
            m.setitem(sys.modules, name, mod)
        for i, p in enumerate(PROMPTS):
            P, C = len(p.split()), 3
            completions = []
            for j in range(n_outputs):
                moe = fake_routing(f"{p}/{j}", P + C - 1, MODEL)
                wire = np.zeros((P + C - 1, 6, 2), np.uint8)  # every decoder layer, the dense one zeros
                wire[:, 1:] = moe
                completions.append(CompletionOutput(j, "x", list(range(100, 100 + C)), -1.5, None, wire, "length"))
                expect.append((P, moe))
            outs.append(RequestOutput(str(i), p, list(range(P)), None, completions, True,
                                      RequestStateStats(C, Kind.FINAL)))
        torch.save(outs, tmp_path / "outputs.pt")
    assert "vllm" not in sys.modules
    return tmp_path / "outputs.pt", expect


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_import_vllm_request_outputs_saved_with_torch(cli, files, tmp_path, monkeypatch, n_outputs):
    """A list of vLLM RequestOutput objects (torch.save(llm.generate(...))) is read by attribute, with
    weights_only=True and without vLLM: one sequence per CompletionOutput."""
    import sys

    _, cfg = files
    path, expect = _fake_vllm_outputs(tmp_path, monkeypatch, n_outputs)
    res = cli("import", path, "--format", "vllm-routed", "--model-config", cfg, "--out", tmp_path / "i.parquet")
    assert res.code == 0, res.err
    assert "vllm" not in sys.modules  # nothing named in the file was imported
    meta, b = read_trace(tmp_path / "i.parquet")
    assert meta.moe_layer_indices == (1, 2, 3, 4, 5) and len(np.unique(b.seq_T)) == len(expect)
    for seq, (P, moe) in enumerate(expect):
        rows = b.seq_T == seq
        np.testing.assert_array_equal(b.experts_TLK[rows], moe)
        assert (b.phase_T[rows] == 0).sum() == P
        np.testing.assert_array_equal(b.token_T[rows], np.r_[np.arange(P), 100, 101])


def test_import_refuses_foreign_objects_in_one_line(cli, files, tmp_path, monkeypatch):
    import torch

    from placer.tracer.engines.fake import ServedRouting

    _, cfg = files
    path, _ = _fake_vllm_outputs(tmp_path, monkeypatch)
    res = cli("import", path, "--format", "trtllm-routed", "--model-config", cfg, "--out", tmp_path / "i.parquet")
    assert_one_line_error(res, 2, "holds vllm objects", "--format vllm-routed")

    torch.save([ServedRouting(np.zeros((2, 6, 2), np.uint8), 1, 2, [])], tmp_path / "other.pt")  # no stack's
    res = cli("import", tmp_path / "other.pt", "--format", "vllm-routed", "--model-config", cfg,
              "--out", tmp_path / "i.parquet")
    assert_one_line_error(res, 2, "other.pt", "neither plain records nor vLLM output objects",
                          "placer.tracer.engines.fake.ServedRouting", "save plain records")
    assert "\x1b" not in res.err  # torch's message is quoted without its terminal escape codes
    assert not (tmp_path / "i.parquet").exists()


@pytest.mark.parametrize("fmt, content, fragments", [
    ("vllm-routed", "{not json\n", ["line 1: not valid JSON"]),
    ("vllm-routed", json.dumps({"choices": [{"routed_experts": "@@"}]}) + "\n", ["line 1", "not valid base64"]),
    ("vllm-routed", json.dumps({"choices": [{"routed_experts": None}]}) + "\n", ["none of the 1 records"]),
    ("trtllm-routed", "{}\n", ["TensorRT-LLM's server responses carry no routing"]),
    ("sglang-routed", "{}\n", ["SGLang sends routing without its shape"]),
])
def test_bad_import_is_one_line_exit_2(cli, tmp_path, fmt, content, fragments):
    log = tmp_path / "r.jsonl"
    log.write_text(content)
    res = cli("import", log, "--format", fmt, "--num-experts", "16", "--out", tmp_path / "i.parquet")
    assert_one_line_error(res, 2, *fragments)
    assert not (tmp_path / "i.parquet").exists()


def test_bench_server_trace_runs(cli):
    res = cli("bench", "server-trace", "--tokens", "3000", "--prompt-tokens", "20", "--generate", "5",
              "--layers", "6", "--dense", "1", "--experts", "16", "--top-k", "2", "--json")
    assert res.code == 0, res.err
    results = json.loads(res.out)["results"]
    assert [r["engine"] for r in results] == ["vllm", "sglang"]
    for r in results:
        assert r["tokens"] >= 3000 and r["failed"] == 0 and r["responses_held_max"] <= 8 + 1
