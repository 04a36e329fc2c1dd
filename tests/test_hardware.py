"""Hardware files (placer.core.hardware): the knee and link fits, the presets, and the refusal of a file that was
tampered with; the one time model in Topology with a fitted curve."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from placer.core.errors import InputError
from placer.core.hardware import (
    KneeFit, LinkFit, expert_section, fit_knee, fit_link, hardware_doc, link_section, load_preset, preset_names,
    read_hardware,
)
from placer.core.objective import Weights
from placer.core.topology import Topology


def test_the_topology_defaults_are_the_h100_preset():
    assert load_preset("h100").topology(8, 2) == Topology(num_gpus=8, num_nodes=2)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_names_the_source_of_every_curve(name):
    doc = load_preset(name).doc
    for sec in (doc["expert"], doc["links"]["intra"], doc["links"]["inter"]):
        assert sec["source"].startswith(("measured", "vendor", "not measured")), sec["source"]
    assert "description" in doc and doc["metadata"]["kind"] == "preset"


def test_the_h100_preset_records_its_error_on_the_reference_measurement():
    """The preset's curve (75 us floor, 600 TFLOP/s) against the reference's DeepSeek-V3 row (docs/reference)."""
    e = load_preset("h100").doc["expert"]
    assert [p[0] for p in e["points"]] == [16, 64, 256, 1024, 4096, 16384]
    assert e["fit"]["max_rel_error"] == pytest.approx(0.1345, abs=1e-3)  # 16384 tokens: 2405 us vs 2713 measured


def test_expert_time_with_an_intercept_is_the_knee_model():
    t = Topology(num_gpus=1, hidden_size=1000, expert_ffn_size=1000, expert_floor_us=50.0, expert_tflops=6e-3,
                 expert_intercept_us=20.0)  # 6e6 FLOPs a token at 6e9 FLOP/s: 1000 us a token
    assert t.token_compute_us == pytest.approx(1000.0)
    assert t.expert_time_us(np.array([0, 1, 2])).tolist() == pytest.approx([0.0, 1020.0, 2020.0])
    t2 = t.with_(expert_floor_us=5000.0)
    assert t2.expert_knee_tokens == pytest.approx(4.98)
    assert t2.expert_time_us(np.array([3, 10])).tolist() == pytest.approx([5000.0, 10020.0])
    with pytest.raises(ValueError, match="expert_intercept_us must be a finite number"):
        Topology(num_gpus=1, expert_intercept_us=float("nan"))


@pytest.mark.parametrize("field", ["expert_tflops", "intra_bw_gbs", "inter_bw_gbs", "intra_latency_us",
                                   "inter_latency_us", "expert_floor_us"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_topology_refuses_non_finite_numbers(field, value, tmp_path):
    """JSON's Infinity passed the "positive" checks (NaN failed them): every number must be finite, in a topology
    file (one line, exit 2) as in the dataclass."""
    from placer.cli.main import run

    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        Topology(num_gpus=2, **{field: value})
    doc = {**Topology(num_gpus=2).to_dict(), field: value}
    path = tmp_path / "topo.json"
    path.write_text(json.dumps(doc))  # writes Infinity / NaN, as a hand edit would
    np.save(tmp_path / "load.npy", np.ones((1, 4)))
    assert run(["solve", "--load", str(tmp_path / "load.npy"), "--topology", str(path), "-o",
                str(tmp_path / "p.json")]) == 2
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("floor, intercept, slope", [(80.0, -10.0, 0.15), (0.0, 120.0, 20.0), (300.0, 40.0, 2.0)])
def test_fit_knee_recovers_a_knee_curve(floor, intercept, slope):
    n = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384], dtype=float)
    true = KneeFit(floor, intercept, slope)
    fit = fit_knee(n, true.predict(n))
    assert np.abs(fit.predict(n) / true.predict(n) - 1).max() < 1e-6
    assert fit.us_per_token == pytest.approx(slope, rel=1e-6)


def test_fit_knee_on_noisy_points_and_bad_input():
    rng = np.random.default_rng(0)
    n = 2.0 ** np.arange(15)
    y = KneeFit(75.0, 0.0, 0.15).predict(n) * rng.uniform(0.95, 1.05, n.size)
    fit = fit_knee(n, y)
    assert 65 < fit.floor_us < 85 and fit.knee_tokens == pytest.approx(500, rel=0.25)
    with pytest.raises(ValueError, match="at least 3"):
        fit_knee([1, 2], [1, 2])
    with pytest.raises(ValueError, match="do not grow"):
        fit_knee([1, 2, 4, 8], [9, 8, 7, 6])


def test_fit_link_recovers_latency_and_bandwidth():
    b = 2.0 ** np.arange(10, 24)
    fit = fit_link(b, LinkFit(12.0, 25.0).predict(b))
    assert fit.latency_us == pytest.approx(12.0) and fit.bandwidth_gbs == pytest.approx(25.0)
    no_latency = fit_link(b, (b - 512) / 5e3)  # a line with a negative intercept: refitted through 0
    assert no_latency.latency_us == 0.0 and no_latency.bandwidth_gbs == pytest.approx(5.0, rel=0.2)


def _measured_doc() -> dict:
    n = 2.0 ** np.arange(8)
    fit = KneeFit(100.0, 90.0, 10.0)
    pts = np.stack([n, fit.predict(n) * np.where(np.arange(8) % 2, 1.02, 0.98)], axis=1)
    held = np.stack([3 * n[:4], fit.predict(3 * n[:4])], axis=1)
    b = 2.0 ** np.arange(10, 16)
    link = LinkFit(300.0, 1.5)
    return hardware_doc(
        expert_section(64, 128, "float32", 4, fit_knee(pts[:, 0], pts[:, 1]), "measured: test", points=pts,
                       heldout=held, device="cpu"),
        link_section(fit_link(b, link.predict(b)), "measured: test", points=np.stack([b, link.predict(b)], axis=1),
                     backend="gloo", world_size=2),
        link_section(LinkFit(10.0, 50.0), "not measured: preset h100"), {"kind": "calibrate"})


def test_a_measured_file_reads_back_and_combines_with_any_gpu_count():
    hw = read_hardware(_measured_doc(), "hw.json")
    t = hw.topology(8, 2)
    assert (t.num_gpus, t.num_nodes, t.hidden_size, t.expert_ffn_size, t.dtype_bytes) == (8, 2, 64, 128, 4)
    assert t.intra_bw_gbs == pytest.approx(1.5) and t.intra_latency_us == pytest.approx(300.0)
    assert t.expert_time_us(4.0) == pytest.approx(hw.doc["expert"]["intercept_us"] + 4 * t.token_compute_us)
    assert hw.doc["expert"]["fit"]["heldout"]["points"] == 4


def tamper(doc: dict, path: str, value) -> dict:
    """A copy of ``doc`` with the field at dotted ``path`` set to ``value`` (removed if ``value`` is KeyError)."""
    d = copy.deepcopy(doc)
    *head, last = path.split(".")
    node = d
    for k in head:
        node = node[k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return d


@pytest.mark.parametrize("path, value, fragments", [
    ("version", 2, ["field 'version' is 2", "reads version 1"]),
    ("format", "something", ["field 'format' is 'something'"]),
    ("expert", KeyError, ["field 'expert' is missing", "expert FFN time curve"]),
    ("links.inter", KeyError, ["field 'links.inter' is missing"]),
    ("links.intra.bandwidth_gbs", -3.0, ["field 'links.intra.bandwidth_gbs' is -3.0, must be positive"]),
    ("links.inter.latency_us", -1, ["field 'links.inter.latency_us' is -1, must be >= 0"]),
    ("expert.tflops", "fast", ["field 'expert.tflops' is 'fast', expected a finite number"]),
    ("expert.hidden_size", 0, ["field 'expert.hidden_size' is 0, must be a positive integer"]),
    ("expert.floor_us", 1000.0, ["field 'expert.floor_us' no longer fits the file's points", "edited"]),
    ("links.intra.bandwidth_gbs", 3.0, ["field 'links.intra.bandwidth_gbs' no longer fits"]),
    ("expert.points", KeyError, ["field 'expert.points' is missing: a measured curve keeps its points"]),
    ("expert.source", KeyError, ["field 'expert.source' is missing"]),
    ("expert.colour", "red", ["field 'expert.colour' is unknown"]),
    ("metadata.fit_errors", KeyError, ["field 'metadata.fit_errors' is missing: a file with measured curves"]),
    ("metadata.fit_errors.expert", KeyError, ["field 'metadata.fit_errors.expert' is None"]),
    ("metadata.fit_errors.expert.max_rel_error", 0.5, ["field 'metadata.fit_errors.expert.max_rel_error' is 0.5",
                                                       "edited"]),
])
def test_a_tampered_file_is_refused_naming_the_field(path, value, fragments):
    with pytest.raises(InputError) as exc:
        read_hardware(tamper(_measured_doc(), path, value), "hw.json")
    msg = str(exc.value)
    assert msg.startswith("hw.json: ") and "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_fit_errors_are_recorded_for_the_fitted_curves_and_presets_still_read():
    meta = _measured_doc()["metadata"]
    assert set(meta["fit_errors"]) == {"expert", "expert_heldout", "links.intra", "links.inter"}
    assert meta["fit_errors"]["links.inter"] == "not measured"
    # A planning file without points needs none; every preset reads (h100 keeps its measured points).
    plan = tamper(tamper(tamper(_measured_doc(), "metadata.fit_errors", KeyError), "expert.points", KeyError),
                  "links.intra.points", KeyError)
    plan["expert"]["source"] = plan["links"]["intra"]["source"] = "vendor: a datasheet"
    read_hardware(plan, "plan.json")
    for name in ("a100", "h100", "h200"):
        load_preset(name)


def test_the_default_weights_follow_the_time_model_and_keep_the_network_dearer():
    t = Topology(num_gpus=4)
    w = Weights.for_topology(t, "ep")
    assert w.inter_weight == pytest.approx(9.0)
    # A calibration whose link inside the node is slower than the preset's network (CPU processes over gloo).
    slow = t.with_(intra_bw_gbs=1.2)
    assert Weights.for_topology(slow, "ep").inter_weight == 1.0


def test_hardware_files_are_json(tmp_path):
    from placer.core.hardware import load_topology_source

    p = tmp_path / "hw.json"
    p.write_text(json.dumps(_measured_doc()))
    assert load_topology_source(p).topology(2).num_gpus == 2
    assert isinstance(load_topology_source("a100"), type(load_preset("h100")))
    p.write_text(json.dumps({"num_gpus": 4}))
    assert load_topology_source(p) == Topology(num_gpus=4)
    with pytest.raises(InputError, match="nor a preset name: a100, h100, h200"):
        load_topology_source(tmp_path / "none.json")
