"""Policy simulation: replay time-ordered traffic window by window, as a serving stack's periodic EPLB does, and
compare re-placement policies.

Window 0 is observed only: every policy starts with a placement fitted to it. Before every later window w, each
policy may re-place using only the windows it has seen (the previous one, or all so far: ``history``), then window
w is served and measured: balance, traffic and estimated MoE time with the cost model (or balance alone for
load-only windows), and the moves from the policy's previous placement, as bytes and as transfer time at the
topology's link speeds (``MoveCount.transfer_us``), added to the window's time.

Policies:

- ``static``: ``eplb`` fitted once on window 0, never changed;
- ``eplb`` / ``auto`` / any registered solver: solved again before every window on the history;
- ``rebalance:K``: ``solvers/rebalance.py`` from its previous placement towards ``auto`` on the history, at most K
  moves per layer.

Moves are counted after the new placement's GPUs are renamed to match the previous ones (``placer.core.moves``):
what a deployment that renames GPUs pays at least.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from placer.core.cost import evaluate_load, evaluate_trace
from placer.core.errors import InputError
from placer.core.mode import TrafficMode
from placer.core.moves import align, count_moves
from placer.core.placement import Placement
from placer.core.stats import RoutingStats, merge_stats
from placer.core.topology import Topology
from placer.core.trace.schema import RoutingBatch
from placer.inputs import problem_from_stats
from solvers import SOLVER_NAMES, SolveOptions, get_solver
from solvers.rebalance import Budget, rebalance

HISTORY = ("last", "all")


@dataclass(frozen=True)
class Policy:
    """A re-placement policy: ``static``, a registered solver's name, or ``rebalance:K``."""

    name: str
    solver: str
    budget: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Policy":
        kind, _, k = text.partition(":")
        if kind == "static":
            return cls("static", "eplb")
        if kind == "rebalance":
            try:
                budget = int(k)
            except ValueError:
                raise InputError(f"--policy {text!r}: give the moves per layer, e.g. rebalance:4") from None
            if budget < 0:
                raise InputError(f"--policy {text!r}: the budget must be >= 0")
            return cls(text, "auto", budget)
        if kind in SOLVER_NAMES and not k:
            return cls(kind, kind)
        raise InputError(f"--policy {text!r}: choose static, rebalance:K or a solver ({', '.join(SOLVER_NAMES)})")


@dataclass
class Window:
    """One window of traffic: its statistics and, from a trace, its tokens."""

    name: str
    stats: RoutingStats
    batch: RoutingBatch | None = None


@dataclass
class WindowFigures:
    policy: str
    window: str
    max_over_mean: float
    worst_layer_max_over_mean: float
    traffic_per_token: float | None
    time_ms: float | None
    moves: int
    bytes_moved: float | None
    transfer_ms: float | None

    @property
    def total_ms(self) -> float | None:
        if self.time_ms is None:
            return None
        return self.time_ms + (self.transfer_ms or 0.0)


@dataclass
class Simulation:
    policies: list[str]
    windows: list[str]
    rows: list[WindowFigures] = field(default_factory=list)

    def totals(self) -> list[dict[str, Any]]:
        """Per policy: the mean balance over the scored windows, the worst, traffic, times and moves summed."""
        out = []
        for p in self.policies:
            mine = [r for r in self.rows if r.policy == p]

            def total(key: str) -> float | None:
                vals = [getattr(r, key) for r in mine]
                return None if any(v is None for v in vals) else float(sum(vals))

            out.append({"policy": p, "mean_max_over_mean": float(np.mean([r.max_over_mean for r in mine])),
                        "worst_max_over_mean": float(max(r.max_over_mean for r in mine)),
                        "moves": int(sum(r.moves for r in mine)), "bytes_moved": total("bytes_moved"),
                        "time_ms": total("time_ms"), "transfer_ms": total("transfer_ms"),
                        "total_ms": total("total_ms")})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"policies": self.policies, "windows": self.windows, "totals": self.totals(),
                "per_window": [{**r.__dict__, "total_ms": r.total_ms} for r in self.rows]}


def simulate(windows: Sequence[Window], policies: Sequence[Policy], topology: Topology, redundant: int,
             mode: TrafficMode | str, history: str = "last", time_limit_s: float = 10.0, seed: int = 0,
             expert_bytes: float | None = None, tokens_per_step: int | None = None,
             progress: Callable[[int], Any] | None = None) -> Simulation:
    """Replay ``windows`` under every policy (module docstring); ``progress(1)`` after each policy's window."""
    if len(windows) < 2:
        raise InputError(f"simulation needs at least two windows (the first is observed only), got {len(windows)}")
    if history not in HISTORY:
        raise InputError(f"--history {history!r}: choose {' or '.join(HISTORY)}")
    mode = TrafficMode.parse(mode)
    options = SolveOptions(time_limit_s=time_limit_s, seed=seed)
    sim = Simulation([p.name for p in policies], [w.name for w in windows[1:]])

    def fitted(p: Policy, seen: list[Window], previous: Placement | None) -> Placement:
        stats = seen[-1].stats if history == "last" else merge_stats([w.stats for w in seen])
        try:
            problem = problem_from_stats(stats, topology, redundant, mode)
            if previous is None or p.budget is None:
                return get_solver(p.solver)(problem, options)
            target = get_solver(p.solver)(problem, options)
            return rebalance([problem], previous, target, Budget(per_layer=p.budget), options)
        except ValueError as exc:
            raise InputError(f"policy {p.name}: {exc}") from None

    for p in policies:
        placement = fitted(p, windows[:1], None)
        for w in range(1, len(windows)):
            new = placement if p.name == "static" else align(placement, fitted(p, list(windows[:w]), placement))
            moved = count_moves(placement, new)
            sim.rows.append(_measure(p.name, windows[w], new, topology, mode, moved, expert_bytes, tokens_per_step))
            placement = new
            if progress is not None:
                progress(1)
    return sim


def _measure(policy: str, window: Window, p: Placement, topology: Topology, mode: TrafficMode, moved,
             expert_bytes: float | None, tokens_per_step: int | None) -> WindowFigures:
    """One policy's figures on one window."""
    if window.batch is not None:
        r = evaluate_trace(window.batch, p, topology, mode, tokens_per_step)
        traffic = r.headline_traffic
        time_ms = r.total_us / 1e3
    else:
        r = evaluate_load(window.stats.load_LE, p, mode)
        traffic, time_ms = None, None
    transfer = None if expert_bytes is None else moved.transfer_us(expert_bytes, topology) / 1e3
    return WindowFigures(policy, window.name, r.mean_imbalance, float(r.imbalance_L.max()), traffic, time_ms,
                         moved.total, None if expert_bytes is None else moved.total * expert_bytes, transfer)
