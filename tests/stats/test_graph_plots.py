"""The routing graph (GraphML, GEXF) and the heatmaps."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from placer.core.errors import InputError
from placer.core.stats import compute_stats
from placer.plots.graph import build_graph, write_graph
from placer.plots.stats import default_layers, write_plots
from tests.stats.conftest import worked_example


def _stats():
    meta, b = worked_example()
    return compute_stats([b], *meta.shape, model_name=meta.model_name)


def test_graph_of_the_worked_example(tmp_path):
    counts = write_graph(tmp_path / "g.graphml", _stats(), min_prob=0.0)
    g = nx.read_graphml(tmp_path / "g.graphml")
    assert g.number_of_nodes() == 8 == counts["nodes"]
    assert g.nodes["L0E1"]["load"] == 2 and g.nodes["L0E1"]["load_share"] == pytest.approx(2 / 6)
    # Expert 3 at layer 0 reaches layer 1 with tokens 0 and 1; both choose expert 2 there.
    e = g.edges["L0E3", "L1E2"]
    assert (e["kind"], e["count"], e["prob"]) == ("transition", 2, 1.0)
    # Expert 1 at layer 0: tokens 0 and 2, but token 2 is missing at layer 1, so P(0 | 1) = 1 / 1.
    assert g.edges["L0E1", "L1E0"]["prob"] == 1.0
    # Co-activation is conditional on the source: P(3 | 1) = 1/2, P(1 | 3) = 1/2, P(3 | 0) = 1/1.
    assert g.edges["L0E1", "L0E3"]["prob"] == 0.5 and g.edges["L0E3", "L0E1"]["count"] == 1
    assert g.edges["L0E0", "L0E3"]["prob"] == 1.0
    assert not g.has_edge("L0E1", "L0E1")
    trans = [d for _, _, d in g.edges(data=True) if d["kind"] == "transition"]
    assert len(trans) == counts["transition_edges"] == 7 and sum(d["count"] for d in trans) == 8
    assert counts["coactivation_edges"] == 2 * (3 + 2)


def test_min_prob_prunes_and_gexf_reads_back(tmp_path):
    s = _stats()
    full, pruned = build_graph(s, 0.0), build_graph(s, 0.6)
    assert pruned.number_of_edges() < full.number_of_edges()
    assert all(d["prob"] >= 0.6 for _, _, d in pruned.edges(data=True))
    assert not pruned.has_edge("L0E1", "L0E3")  # P = 0.5
    write_graph(tmp_path / "g.gexf", s, min_prob=0.6)
    g = nx.read_gexf(tmp_path / "g.gexf")
    assert g.number_of_edges() == pruned.number_of_edges()
    with pytest.raises(InputError, match="use .graphml or .gexf"):
        write_graph(tmp_path / "g.dot", s)


def test_heatmaps_are_png_files(tmp_path):
    s = _stats()
    files = write_plots(tmp_path / "plots", s)
    assert [f.name for f in files] == ["load.png", "transitions_L0.png", "coactivation_L0.png"]
    for f in files:
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert default_layers(58) == [0, 28, 56]
    files = write_plots(tmp_path / "p2", s, layers=[1])
    assert [f.name for f in files] == ["load.png", "coactivation_L1.png"]  # no layer after the last one
    with pytest.raises(InputError, match="--plot-layers 2: outside the 2 MoE layers"):
        write_plots(tmp_path / "p3", s, layers=[2])
