"""Scenarios: the workloads a placement must serve, read from the command line's inputs.

``--scenarios inputs`` makes each input one scenario (a trace or folder, a ``--stats`` file, a ``--load`` file);
``domain`` and ``phase`` split traces by their column; ``window:N`` cuts them into consecutive windows of N tokens in
trace order. Without ``--scenarios`` the inputs are summed into one. Every scenario has the same shape; each one's
figures are later normalised by its own tokens (``Scenario.tokens``), so a large scenario does not drown a small one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from placer.core.errors import InputError
from placer.core.mode import TrafficMode
from placer.core.stats import RoutingStats, merge_stats
from placer.core.stats.stream import SplitBy
from placer.core.topology import Topology
from placer.core.trace.reader import TraceDataset, concat_batches
from placer.core.trace.schema import RoutingBatch
from placer.inputs import (MAX_PATH_ENTRIES, ShapeCheck, load_matrix, load_stats_file, problem_from_stats,
                           stats_from_traces, token_paths)
from solvers import PlacementProblem, SolveOptions, SolverSpec
from solvers.robust import Scenarios, scenario_figures, worst_and_mean

KINDS = ("inputs", "domain", "phase", "window:N")


@dataclass(frozen=True)
class ScenarioSpec:
    """How inputs become scenarios: ``inputs``, ``domain``, ``phase`` or ``window:N``."""

    kind: str
    width: int = 0

    @classmethod
    def parse(cls, text: str) -> "ScenarioSpec":
        kind, _, width = text.strip().lower().partition(":")
        if kind not in ("inputs", "domain", "phase", "window"):
            raise InputError(f"--scenarios {text!r}: choose {', '.join(KINDS)}")
        if (kind == "window") != bool(width):
            raise InputError(f"--scenarios {text!r}: " + ("give the window's tokens, e.g. window:100000"
                                                          if kind == "window" else f"{kind} takes no width"))
        try:
            n = int(width) if width else 0
        except ValueError:
            raise InputError(f"--scenarios {text!r}: window size {width!r} is not a whole number") from None
        if kind == "window" and n < 1:
            raise InputError(f"--scenarios {text!r}: the window must hold at least one token")
        return cls(kind, n)

    @property
    def split(self) -> SplitBy | None:
        """The statistics split of a trace that makes these scenarios (None for ``inputs``)."""
        if self.kind == "inputs":
            return None
        return SplitBy(self.kind, self.width or 1)

    def __str__(self) -> str:
        return f"window:{self.width}" if self.kind == "window" else self.kind


@dataclass
class Scenario:
    """One workload: its statistics and, for the solvers exact on them, its tokens' routing."""

    name: str
    stats: RoutingStats
    paths: RoutingBatch | None = None

    @property
    def tokens(self) -> float:
        """The tokens the scenario's figures are divided by (a load-only input does not say how many it had:
        its expert load over the layers and top-k stands in)."""
        if self.stats.tokens > 0:
            return float(self.stats.tokens)
        s = self.stats
        return float(s.load_LE.sum()) / (s.num_layers * max(s.top_k, 1))


def _names(paths: Sequence[Path]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths)]


def read_scenarios(traces: Sequence[Path] = (), stats_files: Sequence[Path] = (), load_files: Sequence[Path] = (),
                   spec: ScenarioSpec | None = None, check: ShapeCheck | None = None,
                   with_paths: bool = False) -> list[Scenario]:
    """The scenarios of the inputs (one, summed, without ``spec``). ``check(L, E)`` validates the shape before a
    long pass; ``with_paths`` also reads the traces' token routing (within ``MAX_PATH_ENTRIES``)."""
    kinds = [name for name, v in (("traces", traces), ("--stats", stats_files), ("--load", load_files)) if v]
    if len(kinds) != 1:
        raise InputError("give the input as trace file(s), --stats FILE(s) or --load FILE(s)"
                         + (f" (got {' and '.join(kinds)})" if kinds else ""))
    if spec is not None and spec.kind != "inputs" and not traces:
        raise InputError(f"--scenarios {spec} splits the tokens of traces; {kinds[0]} inputs hold counts only: "
                         f"use --scenarios inputs (each file one scenario)")

    # Step 1: one scenario per input, or the inputs summed.
    if spec is None or spec.kind == "inputs":
        groups = [[p] for p in (traces or stats_files or load_files)] if spec is not None else \
            [list(traces or stats_files or load_files)]
        names = _names([g[0] for g in groups]) if spec is not None else ["all inputs"]
        out = []
        for name, group in zip(names, groups):
            if traces:
                stats = stats_from_traces(group, check)
                paths = token_paths(group) if with_paths else None
            else:
                reader = load_stats_file if stats_files else load_matrix
                parts = [reader(p) for p in group]
                stats = parts[0] if len(parts) == 1 else merge_stats(parts)
                if check is not None:
                    check(stats.num_layers, stats.num_experts)
                paths = None
            out.append(Scenario(name, stats, paths))
    else:
        # Step 2: one scenario per group of the traces' tokens (a domain, a phase, a window).
        split = spec.split
        if spec.kind == "domain":
            lacking = [r.path for r in TraceDataset(traces).readers if not r.has_domain]
            if lacking:
                raise InputError(f"{lacking[0]}: column 'domain' is missing; --scenarios domain needs traces with "
                                 f"domains")
        whole = stats_from_traces(traces, check, by=split)
        paths = _split_paths(traces, split) if with_paths else {}
        out = [Scenario(name, part, paths.get(name)) for name, part in whole.splits.items()]
    _check(out, spec)
    return out


def _split_paths(traces: Sequence[Path], split: SplitBy) -> dict[str, RoutingBatch]:
    """The token routing of each group of ``split`` (empty if the traces are too large to hold)."""
    ds = TraceDataset(list(traces))
    L, _, K = ds.meta.shape
    if ds.num_tokens * L * K > MAX_PATH_ENTRIES:
        return {}
    fields = ("experts", "present", "seq") + ((split.field,) if split.field and split.field != "seq" else ())
    batch = ds.read_all(fields=fields)
    codes = split.codes(batch)
    return {split.name(int(c)): batch.select(codes == c) for c in np.unique(codes)}


def _check(scenarios: list[Scenario], spec: ScenarioSpec | None) -> None:
    """InputError naming the scenario: an empty one, too few, or shapes that differ."""
    for s in scenarios:
        if s.tokens <= 0:
            raise InputError(f"scenario {s.name!r} has no tokens")
    if spec is not None and len(scenarios) < 2:
        raise InputError(f"--scenarios {spec} gives {len(scenarios)} scenario ({scenarios[0].name}); a robust "
                         f"placement needs at least two")
    first = scenarios[0]
    for s in scenarios[1:]:
        if s.stats.shape != first.stats.shape:
            raise InputError(f"scenario {s.name!r} has shape (layers, experts, top-k) {s.stats.shape}, scenario "
                             f"{first.name!r} {first.stats.shape}; scenarios must be of one model")


def scenario_problems(scenarios: Sequence[Scenario], topology: Topology, redundant: int, mode: TrafficMode,
                      robust: str | None) -> Scenarios:
    """The solvers' view of the scenarios (``solvers.robust.Scenarios``); ValueError if they cannot be placed."""
    problems = tuple(problem_from_stats(s.stats, topology, redundant, mode, paths=s.paths) for s in scenarios)
    return Scenarios(problems, tuple(s.name for s in scenarios), tuple(s.tokens for s in scenarios), robust or "worst")


def summed_problem(scenarios: Sequence[Scenario], topology: Topology, redundant: int, mode: TrafficMode) -> PlacementProblem:
    """The problem of all scenarios' tokens together (what a solver without scenarios is fitted to)."""
    if len(scenarios) == 1:
        s = scenarios[0]
        return problem_from_stats(s.stats, topology, redundant, mode, paths=s.paths)
    stats = merge_stats([s.stats for s in scenarios])
    paths = concat_batches([s.paths for s in scenarios]) if all(s.paths is not None for s in scenarios) else None
    return problem_from_stats(stats, topology, redundant, mode, paths=paths)


def holdout_check(spec: SolverSpec, scn: Scenarios, options: SolveOptions) -> dict:
    """Leave one out: for every scenario, the placement solved on the others, judged on the one it did not see
    (figures as ``scenario_figures``: per token, with the worst and the mean over the left-out scenarios)."""
    rows = []
    for k, name in enumerate(scn.names):
        placement = spec.solve_scenarios(scn.without(k), options)
        alone = Scenarios((scn.problems[k],), (name,), (scn.tokens[k],), scn.aggregate)
        rows.append(scenario_figures(alone, options, placement)["scenarios"][0])
    return worst_and_mean(rows)


def sampling_note(scenarios: Sequence[Scenario], num_gpus: int) -> str | None:
    """A warning when the inputs are too short to tell the experts' loads apart: in most layers the sampling
    error of a count (its square root, for tokens drawn independently) is more than half the spread of the
    experts' loads, so a placement fitted to them is partly fitted to noise. One note: the input, or the
    scenarios affected (named), with the figures of the first of them."""
    noisy_s = []  # (scenario, noisy layers, layers, noise, spread, layer)
    for sc in scenarios:
        load = np.asarray(sc.stats.load_LE, dtype=np.float64)
        mean = load.mean(axis=1)
        if not (mean > 0).any() or sc.stats.tokens == 0:
            continue  # rates or averages (not counts): no sampling error to speak of
        spread = load.std(axis=1) / np.maximum(mean, 1e-300)
        noise = 1.0 / np.sqrt(np.maximum(mean, 1e-300))
        noisy = int((noise > 0.5 * spread).sum())
        if noisy > len(mean) / 2:
            layer = int(np.argsort(noise / np.maximum(spread, 1e-300))[len(mean) // 2])
            noisy_s.append((sc, noisy, len(mean), noise[layer], spread[layer], layer))
    if not noisy_s:
        return None
    sc, noisy, L, noise, spread, layer = noisy_s[0]
    sqrt_n = "a count of n tokens is known to about sqrt(n)"
    figures = f"{noise:.1%} of the mean expert's load, against a spread of {spread:.1%} in layer {layer}"
    if len(scenarios) == 1:
        return (f"{', '.join(sc.stats.sources) or 'the input'}: in {noisy} of {L} layers the experts' loads differ by "
                f"little more than sampling noise ({sqrt_n}: {figures}); a longer trace would tell them apart")
    names = [s[0].name for s in noisy_s]
    listed = ", ".join(names if len(names) <= 8 else names[:6] + [f"and {len(names) - 6} more"])
    counts = sorted({s[1] for s in noisy_s})
    layers = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return (f"{len(noisy_s)} of {len(scenarios)} scenarios ({listed}): in {layers} of {L} layers the experts' loads "
            f"differ by little more than sampling noise ({sqrt_n}: in scenario {sc.name!r}, {figures}); longer "
            f"scenarios would tell them apart")
