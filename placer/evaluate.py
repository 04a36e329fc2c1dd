"""Comparing placements on one trace: validation that they fit it and each other, the ``contiguous``
reference every comparison carries, and speedups over it. The numbers come from ``placer.core.cost``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from placer.core.cost import EvalResult, TraceSource, evaluate_load, evaluate_many, with_speedups
from placer.core.errors import InputError
from placer.core.mode import TrafficMode
from placer.core.placement import Placement
from placer.core.topology import Topology
from solvers import PlacementProblem, get_solver

REFERENCE = "contiguous"


@dataclass
class Candidate:
    """A placement to compare, with the name it is shown under (its file's stem) and where it came from."""

    name: str
    placement: Placement
    where: str


def check_candidates(cands: Sequence[Candidate], num_layers: int, num_experts: int, input_name: str,
                     model_layer_indices: Sequence[int] | None = None) -> None:
    """InputError naming the file and the values if a placement does not fit the input or the first one."""
    if not cands:
        raise InputError("give at least one placement file to evaluate")
    first = cands[0]
    for c in cands:
        p = c.placement
        if (p.num_layers, p.num_experts) != (num_layers, num_experts):
            raise InputError(f"{c.where}: placement has {p.num_layers} layers x {p.num_experts} experts, "
                             f"{input_name} {num_layers} layers x {num_experts} experts")
        if (model_layer_indices and p.model_layer_indices is not None
                and tuple(p.model_layer_indices) != tuple(model_layer_indices)):
            raise InputError(f"{c.where}: placement is for the model's layers {_short(p.model_layer_indices)}, "
                             f"{input_name} has layers {_short(model_layer_indices)}")
        f = first.placement
        if (p.num_gpus, p.num_nodes) != (f.num_gpus, f.num_nodes):
            raise InputError(f"{c.where}: placement is for {p.num_gpus} GPUs in {p.num_nodes} node(s), "
                             f"{first.where} for {f.num_gpus} GPUs in {f.num_nodes} node(s); placements compared "
                             f"together need the same GPUs and nodes")


def _short(idx: Sequence[int]) -> str:
    idx = list(idx)
    return str(idx) if len(idx) <= 6 else f"[{idx[0]}, {idx[1]}, ..., {idx[-1]}] ({len(idx)})"


def reference_placement(cands: Sequence[Candidate], topology: Topology) -> Placement:
    """``contiguous`` for the candidates' shape and topology, with the fewest slots among them."""
    first = cands[0].placement
    redundant = min(c.placement.num_redundant for c in cands)
    problem = PlacementProblem(np.zeros((first.num_layers, first.num_experts)), topology, num_redundant=redundant,
                               model_layer_indices=first.model_layer_indices)
    return get_solver(REFERENCE)(problem)


def compare_on_trace(source: TraceSource, cands: Sequence[Candidate], topology: Topology, mode: TrafficMode,
                     tokens_per_step: int | None = None,
                     progress: Callable[[int], Any] | None = None) -> tuple[list[EvalResult], int]:
    """Evaluate the candidates and the ``contiguous`` reference in one pass over the trace.

    Returns the results (the candidates in order, then the reference if none of them has its layout) with
    speedups over the reference set, and the index of the reference among them.
    """
    ref = reference_placement(cands, topology)
    placements = [c.placement for c in cands]
    names = [c.name for c in cands]
    ref_index = next((i for i, p in enumerate(placements) if p == ref), None)
    if ref_index is None:
        placements.append(ref)
        names.append(REFERENCE)
        ref_index = len(placements) - 1
    try:
        results = evaluate_many(source, placements, topology, mode, tokens_per_step, names=names, progress=progress)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    with_speedups(results, results[ref_index])
    return results, ref_index


def compare_on_load(load_LE: np.ndarray, cands: Sequence[Candidate], mode: TrafficMode) -> list[EvalResult]:
    """Balance only, from an expert load matrix (no token routing: no traffic, no time)."""
    return [evaluate_load(load_LE, c.placement, mode=mode, name=c.name) for c in cands]
