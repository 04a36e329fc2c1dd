"""PNG heatmaps of routing statistics (matplotlib, Agg backend: no display needed).

- ``load.png``: each expert's share of its layer's routed tokens, MoE layer x expert;
- ``transitions_L{l}.png``: P(expert j chosen at layer l+1 | expert i chosen at layer l);
- ``coactivation_L{l}.png``: P(expert j chosen | expert i chosen) inside layer l (diagonal left blank).

Layers are MoE-layer positions (0-based); titles also give the model's own layer index.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from placer.core.errors import InputError
from placer.core.fileio import atomic_path, output_folder
from placer.core.stats.core import RoutingStats


def default_layers(num_layers: int) -> list[int]:
    """First, middle and last layer pair (the last pair starts at L-2)."""
    last = max(num_layers - 2, 0)
    return sorted({0, last // 2, last})


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _heatmap(data: np.ndarray, title: str, xlabel: str, ylabel: str, cbar: str, path: Path,
             size: tuple[float, float]) -> Path:
    # lazy: matplotlib is slow to import; only the plots need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", interpolation="nearest", cmap=cmap, origin="upper")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # Expert and layer numbers are integers: no ticks between them.
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=ax, label=cbar)
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def write_plots(out_dir: str | os.PathLike, s: RoutingStats, layers: Sequence[int] | None = None) -> list[Path]:
    """Write the heatmaps of ``s`` into ``out_dir``; return the files written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --plots needs a folder, and this is a file")
    L, E, K = s.shape
    layers = default_layers(L) if layers is None else list(layers)
    for l in layers:
        if not 0 <= l < L:
            raise InputError(f"--plot-layers {l}: outside the {L} MoE layers (0..{L - 1})")
    output_folder(out, "--plots folder")
    name = s.model_name if s.model_name != "unknown" else "routing"
    model_layer = list(s.moe_layer_indices) or list(range(L))
    w = min(4 + E / 12, 16)
    files = []
    with np.errstate(invalid="ignore", divide="ignore"):
        share = s.load_LE / s.load_LE.sum(axis=1, keepdims=True)
    files.append(_heatmap(share, f"{name}: expert load ({int(s.tokens):,} tokens)", "expert", "MoE layer",
                          "share of the layer's routed tokens", out / "load.png", (w, min(3 + L / 6, 14))))
    if s.load_only:
        return files
    side = min(5 + E / 20, 14)
    for l in layers:
        if l + 1 < L:
            given = s.trans_LEE[l].sum(axis=1, keepdims=True) / K
            with np.errstate(invalid="ignore", divide="ignore"):
                p = s.trans_LEE[l] / given
            files.append(_heatmap(
                p, f"{name}: transitions, MoE layer {l} -> {l + 1} (model layers {model_layer[l]} -> {model_layer[l + 1]})",
                f"expert j at layer {l + 1}", f"expert i at layer {l}", "P(j chosen at l+1 | i chosen at l)",
                out / f"transitions_L{l}.png", (side + 1.5, side)))
        with np.errstate(invalid="ignore", divide="ignore"):
            c = s.coact_LEE[l] / s.load_LE[l][:, None].astype(np.float64)
        np.fill_diagonal(c, np.nan)
        files.append(_heatmap(
            c, f"{name}: co-activation, MoE layer {l} (model layer {model_layer[l]})", "expert j", "expert i",
            "P(j chosen | i chosen), same token", out / f"coactivation_L{l}.png", (side + 1.5, side)))
    return files
