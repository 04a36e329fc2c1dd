"""Bad input on the whole command line, as a careless or hostile user gives it: every case is one line on
standard error, the documented exit code (2 bad input, 1 failure, 130 Ctrl-C, 143 SIGTERM), no traceback, no
temporary file left and the previous output intact. docs/errors.md lists these cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from placer.core.fileio import remove_stale_temps, temp_beside
from placer.core.placement_io import save_placement
from placer.core.stats.io import save_stats
from placer.core.trace.schema import TraceMeta
from placer.core.trace.writer import TraceWriter
from placer.synth import SynthConfig, generate
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
L, E, K = 2, 4, 2


# ---------------------------------------------------------------------------------------------------
# Files: a good trace, placement, stats file and load matrix, and hostile variants of each
# ---------------------------------------------------------------------------------------------------
def _raw_trace(path, experts=None, weights=None, meta=None, weight_type=pa.float16(), null_row=None):
    """A trace written with pyarrow directly (the writer would refuse what these tests need to read)."""
    T = 40
    meta = meta or TraceMeta(L, E, K)
    if experts is None:
        experts = np.tile(np.array([[0, 1], [2, 3]], dtype=np.uint8), (T, 1, 1))
        experts[::2] = [[2, 3], [0, 1]]
    if weights is None:
        weights = np.full(experts.shape, 0.5, dtype=np.float32)
    T = len(experts)
    ex_list = pa.FixedSizeListArray.from_arrays(pa.array(experts.reshape(-1)), L * K)
    if null_row is not None:
        ex_list = pa.array([None if i == null_row else r for i, r in enumerate(ex_list.to_pylist())], type=ex_list.type)
    schema = pa.schema([pa.field("seq_id", pa.int64()), pa.field("position", pa.int32()), pa.field("phase", pa.int8()),
                        pa.field("experts", ex_list.type), pa.field("weights", pa.list_(weight_type, L * K))],
                       metadata={b"moeplace": meta.to_json().encode()})
    cols = [pa.array(np.arange(T) // 10), pa.array((np.arange(T) % 10).astype(np.int32)), pa.array(np.zeros(T, np.int8)),
            ex_list, pa.FixedSizeListArray.from_arrays(pa.array(weights.reshape(-1).astype(weight_type.to_pandas_dtype())),
                                                       L * K)]
    pq.write_table(pa.table(cols, schema=schema), path)
    return path


def _weights(t, l, k, value):
    w = np.full((40, L, K), 0.5, dtype=np.float32)
    w[t, l, k] = value
    return w


def _dup_experts():
    ex = np.tile(np.array([[0, 1], [2, 3]], dtype=np.uint8), (40, 1, 1))
    ex[7, 1] = [3, 3]
    return ex


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    f = {"dir": d}
    f["trace"] = _raw_trace(d / "t.parquet")
    f["trace_idx"] = _raw_trace(d / "t_idx.parquet", meta=TraceMeta(L, E, K, moe_layer_indices=(3, 5)))
    f["nan_w"] = _raw_trace(d / "nan_w.parquet", weights=_weights(3, 1, 0, np.nan))
    f["inf_w"] = _raw_trace(d / "inf_w.parquet", weights=_weights(3, 1, 0, np.inf))
    f["neg_w"] = _raw_trace(d / "neg_w.parquet", weights=_weights(4, 0, 1, -0.5))
    f["big_w"] = _raw_trace(d / "big_w.parquet", weights=_weights(5, 0, 0, 1e6), weight_type=pa.float32())
    f["dup"] = _raw_trace(d / "dup.parquet", experts=_dup_experts())
    f["null_row"] = _raw_trace(d / "null_row.parquet", null_row=6)

    class _EditedMeta:  # metadata edited by hand: a layer index repeated
        def to_json(self):
            return json.dumps({**json.loads(TraceMeta(L, E, K).to_json()), "moe_layer_indices": [3, 3]})

    f["rep_idx"] = _raw_trace(d / "rep_idx.parquet", meta=_EditedMeta())
    good = f["trace"].read_bytes()
    (d / "trunc.parquet").write_bytes(good[: len(good) // 2])
    f["trunc"] = d / "trunc.parquet"
    (d / "foreign.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    f["foreign"] = d / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), d / "plain.parquet")
    f["plain"] = d / "plain.parquet"

    from placer.core.placement import Placement
    from placer.core.stats.stream import stats_from_traces

    f["placement"] = save_placement(Placement(np.tile(np.arange(E), (L, 1)), num_gpus=2, num_experts=E), d / "p.json")
    doc = json.loads(f["placement"].read_text())
    for name, edit in {"p_id30": lambda x: x["phy2log"][0].__setitem__(0, 10 ** 30),
                       "p_neg": lambda x: x["phy2log"][0].__setitem__(0, -1),
                       "p_float": lambda x: x["phy2log"][0].__setitem__(0, 1.5),
                       "p_missing": lambda x: x["phy2log"].__setitem__(0, [0, 0, 1, 2]),
                       "p_gpus0": lambda x: x.__setitem__("num_gpus", 0),
                       "p_topo": lambda x: x["topology"].__setitem__("intra_bw_gbs", -1) if x.get("topology") else
                       x.__setitem__("topology", {"num_gpus": 2, "num_nodes": 1, "intra_bw_gbs": -1})}.items():
        bad = json.loads(json.dumps(doc))
        edit(bad)
        (d / f"{name}.json").write_text(json.dumps(bad))
        f[name] = d / f"{name}.json"

    stats = stats_from_traces([f["trace"]])
    f["stats"] = save_stats(d / "s.npz", stats)
    z = dict(np.load(f["stats"]))
    meta = json.loads(str(z["meta_json"]))
    tampered = {
        "s_load": {**z, "load_LE": z["load_LE"].astype(np.int64) + 1},
        "s_coact": {**z, "coact_LEE": np.full(z["coact_LEE"].shape, 9, dtype=np.int64)},
        "s_topk": {**z, "meta_json": np.array(json.dumps({**meta, "top_k": 3}))},
        "s_tokens": {**z, "meta_json": np.array(json.dumps({**meta, "tokens": -5}))},
        "s_layers": {**z, "meta_json": np.array(json.dumps({**meta, "moe_layer_indices": ["a", None]}))},
    }
    for name, arrays in tampered.items():
        np.savez(d / f"{name}.npz", **arrays)
        f[name] = d / f"{name}.npz"
    np.savez(d / "s_object.npz", **{**z, "load_LE": np.array([[1, 2], [3, 4]], dtype=object)})
    f["s_object"] = d / "s_object.npz"

    (d / "bom.csv").write_bytes(b"\xef\xbb\xbf1,2,3,4\n4,3,2,1\n")
    f["bom"] = d / "bom.csv"
    (d / "ragged.csv").write_text("1,2,3\n4,3,2,1\n5,5,5,5\n")
    f["ragged"] = d / "ragged.csv"
    np.save(d / "neg.npy", np.array([[1, -2], [3, 4]]))
    f["neg_load"] = d / "neg.npy"
    np.save(d / "nan.npy", np.array([[1, np.nan], [3, 4]]))
    f["nan_load"] = d / "nan.npy"
    for name, rows in {"imp_missing_layer": [{"layer": 0, "token": 0, "experts": [0, 1]}, {"token": 0, "experts": [2, 3]}],
                       "imp_neg_layer": [{"layer": -1, "token": 0, "experts": [0, 1]},
                                         {"layer": 1, "token": 0, "experts": [2, 3]}],
                       "imp_big_weight": [{"layer": 0, "token": 0, "experts": [0, 1], "weights": [1e6, 0.5]},
                                          {"layer": 1, "token": 0, "experts": [2, 3], "weights": [0.5, 0.5]}]}.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        f[name] = d / f"{name}.jsonl"
    return f


# ---------------------------------------------------------------------------------------------------
# The table: (command line, exit code, fragments of the one line). "{name}" is a file of the fixture.
# ---------------------------------------------------------------------------------------------------
CASES = [
    # Foreign, truncated and hostile traces
    ("info {trunc}", 2, ["trunc.parquet", "not a readable Parquet file"]),
    ("stats {foreign}", 2, ["foreign.parquet", "not a readable Parquet file"]),
    ("info {plain}", 2, ["no 'moeplace' metadata"]),
    ("solve {stats} --gpus 2 -o {dir}/x.json", 2, ["s.npz: not a trace (Parquet) but, by its name, a stats file",
                                                   "pass it with --stats FILE"]),
    ("solve {bom} --gpus 2 -o {dir}/x.json", 2, ["not a trace (Parquet) but, by its name, a load matrix",
                                                 "pass it with --load FILE"]),
    ("evaluate {stats} {placement}", 2, ["by its name, a stats file"]),
    ("stats {null_row}", 2, ["column 'experts': row 6 is null"]),
    ("stats {dup}", 2, ["column 'experts': row 7, layer 1 lists expert 3 twice"]),
    ("replay {nan_w} {placement} --backend virtual", 2, ["column 'weights': row 3, layer 1, rank 0", "non-finite"]),
    ("replay {inf_w} {placement} --backend virtual", 2, ["row 3", "non-finite"]),
    ("replay {neg_w} {placement} --backend virtual", 2, ["row 4, layer 0, rank 1", "negative gate weight"]),
    ("replay {big_w} {placement} --backend virtual", 2, ["row 5", "above float16's range"]),
    ("info --weights {nan_w}", 2, ["column 'weights': row 3, layer 1, rank 0", "non-finite"]),
    ("info --weights {neg_w}", 2, ["row 4, layer 0, rank 1", "negative gate weight"]),
    ("info {rep_idx}", 2, ["metadata: moe_layer_indices [3, 3] must be distinct layer numbers >= 0"]),
    ("stats {trace} {trace_idx}", 2, ["moe_layer_indices [3, 5] differ", "one model"]),
    ("solve {trace} {trace_idx} --gpus 2 -o {dir}/x.json", 2, ["moe_layer_indices [3, 5] differ"]),
    # Hand-edited placements
    ("evaluate {trace} {p_id30}", 2, ["p_id30.json", "beyond 64-bit integers", "outside [0, 4)"]),
    ("export {p_id30} --format sglang -o {dir}/x.json", 2, ["p_id30.json", "outside [0, 4)"]),
    ("evaluate {trace} {p_neg}", 2, ["phy2log[0][0]", "-1"]),
    ("evaluate {trace} {p_float}", 2, ["phy2log[0][0]", "1.5"]),
    ("evaluate {trace} {p_missing}", 2, ["layer 0: expert 3 has no slot"]),
    ("evaluate {trace} {p_gpus0}", 2, ["num_gpus"]),
    ("evaluate {trace} {p_topo}", 2, ["topology", "intra_bw_gbs"]),
    # Tampered stats files
    ("stats {s_load}", 2, ["s_load.npz", "load_LE sums to", "altered or corrupted"]),
    ("solve --stats {s_coact} --gpus 2 -o {dir}/x.json", 2, ["coact_LEE is not symmetric"]),
    ("stats {s_topk}", 2, ["top_k x tokens_L = 3 x"]),
    ("stats {s_tokens}", 2, ["'tokens' must be an integer >= 0, got -5"]),
    ("stats {s_layers}", 2, ["'moe_layer_indices' must list 2 distinct layer numbers"]),
    ("stats {s_object}", 2, ["array 'load_LE' cannot be read", "Object arrays"]),
    # Load matrices
    ("stats --load {ragged}", 2, ["ragged.csv", "line 2 has 4 values"]),
    ("stats --load {neg_load}", 2, ["is negative"]),
    ("stats --load {nan_load}", 2, ["finite"]),
    # Imports
    ("import {imp_missing_layer} -o {dir}/x.parquet", 2, ["record 1: field 'layer' (--layer-field) is missing"]),
    ("import {imp_neg_layer} -o {dir}/x.parquet", 2, ["record 0: field 'layer' = -1"]),
    ("import {imp_big_weight} -o {dir}/x.parquet", 2, ["above float16's range"]),
    # Options out of range
    ("synth -L 2 -E 4 -K 2 -T 10 --zipf nan -o {dir}/x.parquet", 2, ["zipf (nan) must be a finite number >= 0"]),
    ("synth -L 2 -E 4 -K 2 -T 10 --zipf inf -o {dir}/x.parquet", 2, ["zipf (inf)"]),
    ("solve {trace} --gpus 2 --nodes 0 -o {dir}/x.json", 2, ["num_nodes must be a positive integer, got 0"]),
    ("solve {trace} --gpus 3 -o {dir}/x.json", 2, ["must divide by gpus (3)"]),
    ("solve {trace} --gpus 2 --redundant 1000000000000 -o {dir}/x.json", 2, ["redundant (1000000000000) exceeds "
                                                                              "experts x (gpus - 1) = 4 x 1"]),
    ("solve {trace} --gpus 2 --redundant 6 -o {dir}/x.json", 2, ["some GPU would hold two copies of one expert"]),
    ("replay {trace} {placement} --backend virtual --hidden 0", 2, ["hidden_size must be a positive integer, got 0"]),
    ("replay {trace} {placement} --backend virtual --nodes 0", 2, ["--nodes 0: must be a positive integer"]),
    ("replay {trace} {placement} --backend virtual --weight-bank -1", 2, ["weight-bank (-1) must be >= 0"]),
    # Hostile integers: bounded, in one line naming the bound (before: OverflowError, or minutes of work)
    ("export {placement} --format sglang --num-model-layers 99999999999999999999 -o {dir}/x.json", 2,
     ["--num-model-layers (99999999999999999999) must be between 1 and 100,000"]),
    ("export {placement} --format sglang --num-model-layers 100000000 -o {dir}/x.json", 2, ["between 1 and 100,000"]),
    ("export {placement} --format sglang --moe-layers 99999999999999999999,1 -o {dir}/x.json", 2,
     ["--moe-layers: layer 99999999999999999999 is beyond the 100,000 decoder layers"]),
    ("export {placement} --format trtllm --mtp-layers 1000000000 -o {dir}/x.yaml", 2,
     ["--mtp-layers (1000000000) must be between 0 and 100,000"]),
    ("export {placement} --format trtllm --moe-layers 0-1 --mtp-layers 99999 -o {dir}/x.yaml", 2,
     ["--mtp-layers (99999) must be between 0 and 99,998: MTP layers take decoder indices from 2 on"]),
    ("import-placement {placement} --format moeplace --moe-layers 0-99999999999999999999 -o {dir}/x.json", 2,
     ["beyond the 100,000 decoder layers"]),
    ("synth -L 99999999999999999999 -E 4 -K 2 -T 10 -o {dir}/x.parquet", 2, ["layers (99999999999999999999) must be "
                                                                             "at most 100,000"]),
    ("synth -L 2 -E 4 -K 2 -T 10 --seq-len 99999999999999999999 -o {dir}/x.parquet", 2, ["positions are int32"]),
    ("synth -L 2 -E 4 -K 2 -T 10 --domains 99999999999999999999 -o {dir}/x.parquet", 2, ["domains (", "int16"]),
    ("import {imp_neg_layer} --num-experts 99999999999999999999 -o {dir}/x.parquet", 2, ["--num-experts must be "
                                                                                         "between 1 and 4,294,967,296"]),
    ("solve {trace} --gpus 2 -s cpsat --seed 99999999999999999999 -o {dir}/x.json", 2, ["seed (99999999999999999999) "
                                                                                       "must be at most 2,147,483,647"]),
    ("solve {trace} --gpus 2 --threads 99999999999999999999 -o {dir}/x.json", 2, ["threads (", "at most 1,024"]),
    ("rebalance {placement} {trace} --max-moves 1 --seed 99999999999999999999 -o {dir}/x.json", 2, ["seed ("]),
    ("replay {trace} {placement} --backend virtual --steps 99999999999999999999", 2, ["steps (", "at most 1,000,000"]),
    ("replay {trace} {placement} --backend virtual --hidden 99999999999999999999", 2, ["hidden (", "at most"]),
    ("calibrate --hidden 99999999999999999999 --ffn 8 -o {dir}/x.json", 2, ["--hidden (99999999999999999999) must be "
                                                                            "at most 1,048,576"]),
    ("stats {trace} --engine dask --workers 99999999999999999999", 2, ["--workers (99999999999999999999) must be at "
                                                                       "most 1,024"]),  # was: ran without end
    ("bench robust --layers 0", 2, ["layers must be a positive integer, got 0"]),  # was an internal error, 1
    ("bench validate --layers 99999999999999999999", 2, ["layers (99999999999999999999) must be at most 100,000"]),
    ("bench validate --threads 99999 --out-dir {dir}/v", 2, ["--threads (99999) must be at most 1,024"]),  # segfaulted
    ("bench scale --workers 99999", 2, ["--workers (99999) must be at most 1,024"]),  # made its shards first
    # Outputs that are inputs, and outputs that cannot be written
    ("solve {trace} --gpus 2 -o {trace}", 2, ["--out names the same file as an input", "must be outside the inputs"]),
    ("stats {trace} -o {dir}/../{dir.name}/t.parquet", 2, ["--out names the same file as an input"]),
    ("stats {trace} -o {dir}/g.npz --graph {dir}/g.npz", 2, ["--graph names the same file as --out"]),
    ("stats merge {stats} -o {stats}", 2, ["--out names the same file"]),
    ("stats --load {bom} -o {bom}", 2, ["--out names the same file as --load"]),
    ("export {placement} --format sglang -o {placement}", 2, ["--out names the same file"]),
    ("import {imp_neg_layer} -o {imp_neg_layer}", 2, ["--out names the same file"]),
    # The parser's own errors
    ("rebalance {placement} {trace} --budget 1 -o {dir}/x.json", 2, ["No such option: --budget",
                                                                     "see moeplace rebalance --help"]),
    ("solve {trace} --gpus x -o {dir}/x.json", 2, ["Invalid value for '--gpus'", "see moeplace solve --help"]),
    ("solve {trace} --gpus 2", 2, ["Missing option '--out'"]),
    ("solve {trace} --gpus 2 -o /proc/moeplace-x.json", 2, ["/proc/moeplace-x.json", "cannot write in output folder"]),
    ("solve {trace} --gpus 2 -o {trace}/x.json", 2, ["t.parquet: is a file; the output folder must be a folder"]),
    ("stats {trace} --plots /proc/moeplace-plots", 2, ["cannot create the --plots folder"]),
    ("stats {trace} --plots {placement}", 2, ["p.json: --plots needs a folder, and this is a file"]),
]


def _args(line: str, files: dict) -> list[str]:
    return line.format(**files).split()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("line, code, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_its_exit_code(cli, files, line, code, fragments):
    before = _snapshot(files["dir"])
    res = cli(*_args(line, files))
    assert_one_line_error(res, code, *fragments)
    after = _snapshot(files["dir"])
    assert after == before, "an input changed or an output or temporary file appeared"


def test_info_reads_weights_only_when_asked(cli, files):
    """docs/trace-format.md: only the commands that read the gate weights check them (replay, info --weights)."""
    res = cli("info", files["nan_w"])
    assert res.code == 0, res.err
    assert "not read (--weights checks them)" in res.out
    res = cli("info", "--weights", files["trace"], "--json")
    assert res.code == 0 and json.loads(res.out)["weights_checked"] is True, res.err


def test_more_exflow_batches_than_tokens_is_one_token_each(cli, files, tmp_path):
    res = cli("solve", files["trace"], "--gpus", 2, "-s", "exflow", "--batches", 99999999999999999999, "--time-limit",
              3, "-o", tmp_path / "x.json")  # was "exflow: Maximum allowed size exceeded"
    assert res.code == 0, res.err


def test_a_huge_batch_size_reads_the_file_in_one_batch(cli, files):
    res = cli("stats", files["trace"], "--batch-size", 99999999999999999999, "--json")  # was OverflowError
    assert res.code == 0, res.err


def test_a_hard_link_to_an_input_is_the_input(cli, files, tmp_path):
    link = tmp_path / "link.parquet"
    os.link(files["trace"], link)
    assert_one_line_error(cli("solve", files["trace"], "--gpus", 2, "-o", link), 2, "names the same file as an input")


def test_a_bom_load_csv_keeps_layer_zero(cli, files, tmp_path):
    res = cli("stats", "--load", files["bom"], "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["num_layers"] == 2


@pytest.mark.parametrize("values", [[2 ** 63, 1, 2, 3], [2 ** 62, 2 ** 62, 2 ** 62, 3]])
def test_loads_near_int64_stay_loads_not_zeros(files, tmp_path, values):
    from placer.core.stats.loadonly import load_only_stats

    path = tmp_path / "big.npy"
    np.save(path, np.array([values, [1, 2, 3, 4]], dtype=np.uint64))
    s = load_only_stats(path)
    assert s.real_valued  # too large for exact counts: kept as reals, never wrapped around
    np.testing.assert_allclose(s.load_LE[0], np.array(values, dtype=np.float64))


def test_warnings_are_held_back_when_the_command_fails(cli, files, monkeypatch):
    from placer.core.errors import InputError
    from placer.core.stats import loadonly

    def warn_then_fail(path, top_k=None):
        warnings.warn("overflow encountered in cast", RuntimeWarning)
        raise InputError(f"{path}: the failure the warning was about")

    monkeypatch.setattr(loadonly, "load_only_stats", warn_then_fail)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = cli("stats", "--load", files["bom"])
    assert_one_line_error(res, 2, "the failure the warning was about")
    assert not [w for w in seen if "overflow" in str(w.message)]


def test_a_config_check_is_bad_input_and_another_value_error_a_bug(cli, files, monkeypatch):
    """A ValueError from a configuration dataclass's own check that a command passed on is exit 2; any other
    ValueError stays an internal error (exit 1): a bug."""
    from placer.core.stats import loadonly

    def bug(path, top_k=None):
        raise ValueError("some library's complaint")

    monkeypatch.setattr(loadonly, "load_only_stats", bug)
    assert_one_line_error(cli("stats", "--load", files["bom"]), 1, "internal error: ValueError: some library's")


def test_out_of_memory_is_a_one_line_failure(cli, files, monkeypatch):
    from placer.core.stats import loadonly

    def too_big(path, top_k=None):
        raise MemoryError("Unable to allocate 52.2 GiB for an array")

    monkeypatch.setattr(loadonly, "load_only_stats", too_big)
    assert_one_line_error(cli("stats", "--load", files["bom"]), 1, "out of memory (Unable to allocate 52.2 GiB")


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "x.json"
    mine = temp_beside(out)  # this (live) process's: kept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / mine.name.replace(f"-{os.getpid()}.", f"-{int(dead.stdout)}.")
    stale.write_text("half")
    other_host = tmp_path / f".x.json.otherhost-{int(dead.stdout)}.abc.tmp"
    other_host.write_text("half")
    unrelated = tmp_path / ".y.json.h-1.abc.tmp"
    unrelated.write_text("other output")
    assert remove_stale_temps(out) == [stale]
    assert mine.exists() and other_host.exists() and unrelated.exists() and not stale.exists()


def test_numba_cache_falls_back_to_a_temporary_folder(monkeypatch, tmp_path):
    import placer

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # under a file: cannot be created
    monkeypatch.setattr(placer._os, "access", lambda *a: False)   # a read-only install
    placer._numba_cache_fallback()
    folder = os.environ["NUMBA_CACHE_DIR"]
    assert "moeplace-numba-cache" in folder
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/elsewhere")
    placer._numba_cache_fallback()
    assert os.environ["NUMBA_CACHE_DIR"] == "/elsewhere"  # the user's choice is kept


# ---------------------------------------------------------------------------------------------------
# Signals over an existing output: one line, the exit code, no temporary file, the old output intact
# ---------------------------------------------------------------------------------------------------
def _start_synth(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOEPLACE_QUIET": "1"}
    return subprocess.Popen([sys.executable, "-m", "placer", "synth", "-L", "16", "-E", "64", "-K", "4", "-T",
                             "20000000", "-o", str(out)], stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_temp(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the run writes its temporary file (it is then in the middle of writing)."""
    t0 = time.monotonic()
    while not list(folder.glob(".*.tmp")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() - t0 < timeout
        time.sleep(0.05)
    time.sleep(0.5)


@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "moeplace: error: interrupted"),
                                             (signal.SIGTERM, 143, "moeplace: error: terminated")])
def test_a_signal_mid_write_keeps_the_old_output(tmp_path, sig, code, line):
    out = tmp_path / "t.parquet"
    out.write_bytes(b"the previous output")
    proc = _start_synth(out)
    _wait_for_temp(tmp_path, proc)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == code, err
    assert err.strip() == line
    assert out.read_bytes() == b"the previous output"
    assert not list(tmp_path.glob(".*.tmp"))


def test_sigkill_leaves_a_temp_that_the_next_run_removes(tmp_path, cli):
    out = tmp_path / "t.parquet"
    out.write_bytes(b"the previous output")
    proc = _start_synth(out)
    _wait_for_temp(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert out.read_bytes() == b"the previous output"
    assert len(list(tmp_path.glob(".t.parquet.*.tmp"))) == 1  # SIGKILL cannot be caught
    res = cli("synth", "-L", 2, "-E", 4, "-K", 2, "-T", 10, "-o", out)
    assert res.code == 0, res.err
    assert not list(tmp_path.glob(".*.tmp"))
    assert out.read_bytes() != b"the previous output"


@pytest.mark.slow  # two synth processes of 100,000 tokens
def test_two_runs_writing_one_output_leave_one_whole_file(tmp_path):
    out = tmp_path / "t.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOEPLACE_QUIET": "1"}
    runs = [subprocess.Popen([sys.executable, "-m", "placer", "synth", "-L", "2", "-E", "8", "-K", "2", "-T", "100000",
                              "--seed", str(seed), "-o", str(out)], stderr=subprocess.PIPE, text=True, env=env)
            for seed in (1, 2)]
    for p in runs:
        assert p.wait(timeout=300) == 0, p.communicate()[1]
    from placer.core.trace.reader import TraceReader

    r = TraceReader(out)
    assert r.num_tokens == 100000 and r.meta.extra["synth"]["seed"] in (1, 2)
    assert sum(1 for _ in r.iter_batches()) > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_quoted_library_messages_carry_no_terminal_escape_codes(cli, tmp_path, monkeypatch):
    """torch's weights-only refusal wraps a phrase in bold (ESC [1m ... ESC [0m): a quoted message is plain
    text, whether quoted through first_line or printed by the command line's error handler."""
    from placer.core.errors import InputError, first_line, plain_text

    torch_like = ("Weights only load failed. \x1b[1mdo those steps only if you trust the source\x1b[0m.\n"
                  "second line")
    assert first_line(ValueError(torch_like)) == "Weights only load failed. do those steps only if you trust the source."
    assert plain_text("a\x1b]8;;http://x\x07link\x1b]8;;\x07\tb\x07") == "alink\tb"


    def boom(*a, **k):
        raise InputError(f"t.parquet: quoted ({torch_like.splitlines()[0]})")

    monkeypatch.setattr("placer.core.trace.summary.summarize", boom)
    trace = tmp_path / "t.parquet"
    trace.write_bytes(b"x")
    res = cli("info", trace)
    assert_one_line_error(res, 2, "t.parquet: quoted (Weights only load failed. do those steps")
    assert "\x1b" not in res.err
