"""PNG charts of placements over time and budgets: a simulation's imbalance and moves per window, and a
rebalance's objective against its move budget (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from placer.core.fileio import atomic_path


def _pyplot():
    # lazy: matplotlib is slow to import; only the plots need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def plot_simulation(sim: Any, path: Path) -> Path:
    """Two panels over the windows: each policy's max/mean GPU load, and its moves."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    x = list(range(1, len(sim.windows) + 1))
    for p in sim.policies:
        rows = [r for r in sim.rows if r.policy == p]
        top.plot(x, [r.max_over_mean for r in rows], "o-", ms=3, label=p)
        bottom.plot(x, [r.moves for r in rows], "o-", ms=3, label=p)
    top.set_ylabel("max/mean GPU load")
    top.legend(fontsize=8)
    bottom.set_ylabel("moves")
    bottom.set_xlabel("window (the first, observed only, not shown)")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_front(front: list[dict], path: Path, current: float) -> Path:
    """A rebalance's objective against the moves, one point per budget, the full re-solve last."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["moves"] for p in front]
    ax.plot(xs[:-1], [p["objective"] for p in front[:-1]], "o-", label="rebalance (greedy steps)")
    ax.plot(xs[-1:], [front[-1]["objective"]], "s", color="C3", label="full re-solve")
    ax.axhline(current, color="grey", lw=0.8, ls="--", label="current")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(xs) * 1.5 + 1)
    ax.set_xlabel("moves (expert copies loaded onto a GPU)")
    ax.set_ylabel("objective")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
