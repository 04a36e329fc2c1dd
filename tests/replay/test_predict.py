"""The cost model's prediction beside a replay's measurement: the same tokens, steps (wrapping around), replica
rule and placements, so that with a linear expert curve and free links its compute is the replay's exact
(token, expert) count of the busiest rank."""

from __future__ import annotations

import numpy as np
import pytest

from placer.core.topology import Topology
from placer.replay.config import Case
from placer.replay.predict import predict_cases, rank_correlation
from placer.replay.report import add_predictions, add_speedups
from placer.replay.virtual import run_virtual
from tests.replay.conftest import make_config, plain_placement, redundant_placement


def test_predicted_compute_is_the_replays_busiest_rank_with_a_linear_curve(small_trace):
    # 1 us a token (6 x hidden x ffn FLOPs at that many TFLOP/s x 1e6), no floor, free links.
    H, F = 32, 48
    topo = Topology(num_gpus=4, num_nodes=2, hidden_size=H, expert_ffn_size=F, dtype_bytes=4, expert_floor_us=0.0,
                    expert_tflops=6 * H * F / 1e6, intra_bw_gbs=1e12, inter_bw_gbs=1e12, intra_latency_us=0.0,
                    inter_latency_us=0.0)
    cases = [Case(f"{n}-{m}", p, m) for n, p in (("plain", plain_placement()), ("redundant", redundant_placement()))
             for m in ("ep", "coherent")]
    cfg = make_config(small_trace, cases, topology=topo, steps=4, check="none")  # 3 trace steps: step 3 wraps to 0
    measured, _, _ = run_virtual(cfg)
    predicted = predict_cases(cfg)
    for m, p in zip(measured, predicted):
        busiest = np.mean([layer["tokens_computed_max"] for layer in m["layers"]])
        assert p["compute_ms_per_layer"] * 1e3 == pytest.approx(busiest, abs=0.1), m["name"]
        assert p["comm_ms_per_layer"] == pytest.approx(0.0, abs=1e-6)
        assert p["step_ms"] == pytest.approx(p["compute_ms_per_layer"] * cfg.num_layers)


def test_the_report_sets_predictions_beside_measurements():
    cases = [{"name": n, "step_ms_median": ms, "compute_straggler_ms_per_layer": ms / 4} for n, ms in
             (("a", 10.0), ("b", 5.0), ("c", 8.0), ("d", 20.0))]
    add_speedups(cases)
    summary = add_predictions(cases, [{"step_ms": ms, "compute_ms_per_layer": ms / 4, "comm_ms_per_layer": 0.0}
                                      for ms in (12.0, 6.0, 9.0, 30.0)])
    assert [c["predicted_speedup_vs_first"] for c in cases] == [1.0, 2.0, 1.333, 0.4]
    assert cases[1]["step_error"] == pytest.approx(0.2) and cases[3]["speedup_error"] == pytest.approx(0.4 / 0.5 - 1)
    assert summary["rank_correlation"] == 1.0 and summary["placements"] == 4
    assert summary["max_abs_step_error"] == pytest.approx(0.5)


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9487, abs=1e-4)  # a tie: mean ranks
    assert rank_correlation([1, 2], [1, 2]) is None
    assert rank_correlation([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError):
        rank_correlation([1, 2, 3], [1, 2])
