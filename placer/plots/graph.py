"""The routing graph: experts as nodes, transitions and co-activation as weighted edges (networkx).

- node ``"L{l}E{e}"`` for expert e of MoE layer l (0-based over MoE layers), with ``layer``, ``model_layer``
  (the model's decoder-layer index), ``expert``, ``load`` (token count) and ``load_share`` (of the layer);
- transition edge ``L{l}E{i} -> L{l+1}E{j}`` (``kind="transition"``): ``count`` = tokens with i at l and j at
  l+1; ``prob`` = P(j chosen at l+1 | i chosen at l) = count / tokens with i at l that reach l+1;
- co-activation edges ``L{l}E{i} -> L{l}E{j}`` and back (``kind="coactivation"``): ``count`` = tokens that
  chose both; ``prob`` = P(j chosen | i chosen) = count / load of i (so the two directions differ).

Edges with ``prob < min_prob`` are left out (``min_prob=0`` keeps every edge with a count). Written as
GraphML (``.graphml``) or GEXF (``.gexf``, Gephi).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from placer.core.errors import InputError
from placer.core.fileio import atomic_path
from placer.core.stats.core import RoutingStats

GRAPH_SUFFIXES = (".graphml", ".gexf")
# Each token picks K experts, so the probabilities of one source sum to K (uniform: K / E). 0.2 keeps the
# strong edges: about 170k of 7.5M possible on a 1M-token DeepSeek-V3-shaped trace, 0.05 kept 1M.
DEFAULT_MIN_PROB = 0.2


def node_id(layer: int, expert: int) -> str:
    return f"L{layer}E{expert}"


def _edges(g, kind: str, src_layer: int, dst_layer: int, count_EE: np.ndarray, given_E: np.ndarray,
           min_prob: float) -> None:
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = count_EE / given_E[:, None]
    keep = (count_EE > 0) & (prob >= min_prob)
    if kind == "coactivation":
        np.fill_diagonal(keep, False)
    for i, j in zip(*np.nonzero(keep)):
        g.add_edge(node_id(src_layer, int(i)), node_id(dst_layer, int(j)), kind=kind,
                   count=int(count_EE[i, j]), prob=float(round(prob[i, j], 6)))


def build_graph(s: RoutingStats, min_prob: float = DEFAULT_MIN_PROB, coactivation: bool = True):
    """A ``networkx.DiGraph`` of ``s`` (see the module docstring)."""
    # lazy: networkx is slow to import; only the graph needs it
    import networkx as nx

    s.require_affinity("the routing graph")
    if not 0.0 <= min_prob <= 1.0:
        raise InputError(f"--min-prob {min_prob} must be between 0 and 1")
    L, E, K = s.shape
    g = nx.DiGraph(model_name=s.model_name, num_layers=L, num_experts=E, top_k=K, tokens=int(s.tokens),
                   min_prob=float(min_prob))
    model_layers = list(s.moe_layer_indices) or list(range(L))
    for l in range(L):
        total = max(int(s.load_LE[l].sum()), 1)
        for e in range(E):
            load = int(s.load_LE[l, e])
            g.add_node(node_id(l, e), layer=l, model_layer=int(model_layers[l]), expert=e, load=load,
                       load_share=float(round(load / total, 6)))
    for l in range(L - 1):
        # Each token with i at l that reaches l+1 adds K pairs to row i: divide by K for tokens.
        given = s.trans_LEE[l].sum(axis=1) / K
        _edges(g, "transition", l, l + 1, s.trans_LEE[l], given, min_prob)
    if coactivation:
        for l in range(L):
            _edges(g, "coactivation", l, l, s.coact_LEE[l], s.load_LE[l].astype(np.float64), min_prob)
    return g


def write_graph(path: str | os.PathLike, s: RoutingStats, min_prob: float = DEFAULT_MIN_PROB) -> dict[str, int]:
    """Write the graph of ``s`` as GraphML or GEXF (by suffix), atomically; return node and edge counts."""
    # lazy: networkx is slow to import; only the graph needs it
    import networkx as nx

    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in GRAPH_SUFFIXES:
        raise InputError(f"{out}: unknown graph format '{out.suffix}'; use .graphml or .gexf")
    g = build_graph(s, min_prob)
    with atomic_path(out) as tmp:
        (nx.write_graphml if suffix == ".graphml" else nx.write_gexf)(g, tmp)
    kinds = [d["kind"] for _, _, d in g.edges(data=True)]
    return {"nodes": g.number_of_nodes(), "transition_edges": kinds.count("transition"),
            "coactivation_edges": kinds.count("coactivation")}
