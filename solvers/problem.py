"""What every solver takes: the placement problem (statistics, topology, redundancy, traffic mode) and the
solve options (time limit, seed, threads, solver parameters). Validated on construction; user mistakes are
``ValueError``s whose message names the values."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placer.core.limits import MAX_SEED, MAX_THREADS, require_at_most
from placer.core.mode import TrafficMode
from placer.core.placement import Placement, SolveReport
from placer.core.topology import Topology


def max_redundant(num_experts: int, num_gpus: int) -> int:
    """The most redundant copies of ``num_experts`` experts on ``num_gpus`` GPUs with no two copies of one expert on
    one GPU: E x (G - 1) (one GPU: up to E, as a model); beyond it some GPU holds two copies of one expert."""
    return num_experts * max(num_gpus - 1, 1)


@dataclass(frozen=True, eq=False)
class PlacementProblem:
    """A placement problem.

    load_LE: [L, E] expert load (tokens x ranks routed to each expert), always present.
    coact_LEE, trans_LEE: co-activation and adjacent-layer transition counts (see ``placer.core.stats``), or
        None for load-only statistics.
    paths_TLK / present_TL / seq_T: optional sampled token routing for token-level formulations.
    topology: GPUs, nodes, links. num_redundant: extra physical slots per layer (P = E + R).
    """

    load_LE: np.ndarray
    topology: Topology
    num_redundant: int = 0
    mode: TrafficMode = TrafficMode.EP
    top_k: int = 1
    coact_LEE: np.ndarray | None = None
    trans_LEE: np.ndarray | None = None
    paths_TLK: np.ndarray | None = None
    present_TL: np.ndarray | None = None
    seq_T: np.ndarray | None = None
    source: str | None = None
    model_layer_indices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        load = np.asarray(self.load_LE, dtype=np.float64)
        if load.ndim != 2 or load.size == 0:
            raise ValueError(f"load must be a non-empty [layers, experts] matrix, got shape {load.shape}")
        if (load < 0).any() or not np.isfinite(load).all():
            raise ValueError("load must hold finite, non-negative counts")
        object.__setattr__(self, "load_LE", load)
        object.__setattr__(self, "mode", TrafficMode.parse(self.mode))
        L, E = load.shape
        G = self.topology.num_gpus
        if self.num_redundant < 0:
            raise ValueError(f"redundant ({self.num_redundant}) must be >= 0")
        # Beyond ``max_redundant`` an absurd count (10^12) would otherwise run without end.
        if self.num_redundant > max_redundant(E, G):
            raise ValueError(f"redundant ({self.num_redundant}) exceeds experts x (gpus - 1) = {E} x {max(G - 1, 1)}: "
                             f"some GPU would hold two copies of one expert")
        P = E + self.num_redundant
        if P % G:
            raise ValueError(f"experts ({E}) + redundant ({self.num_redundant}) must divide by gpus ({G})")
        for name, shape in (("coact_LEE", (L, E, E)), ("trans_LEE", (max(L - 1, 0), E, E))):
            v = getattr(self, name)
            if v is not None and np.shape(v) != shape:
                raise ValueError(f"{name} has shape {np.shape(v)}, expected {list(shape)}")

    @property
    def num_layers(self) -> int:
        return int(self.load_LE.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.load_LE.shape[1])

    @property
    def num_slots(self) -> int:
        return self.num_experts + self.num_redundant

    @property
    def slots_per_gpu(self) -> int:
        return self.num_slots // self.topology.num_gpus

    def report(self, solver: str, start: float, **fields: Any) -> SolveReport:
        """The report of a solve of this problem by ``solver`` that began at ``start`` (``time.perf_counter()``):
        its mode and source, the wall time until now, and ``fields``."""
        return SolveReport(solver=solver, mode=self.mode, source=self.source,
                           wall_time_s=time.perf_counter() - start, **fields)

    def placement(self, gpu_LX: Any, expert_LX: Any, report: SolveReport, order_LX: Any = None) -> Placement:
        """The placement of an assignment of items (copies of experts) to GPUs for this problem's topology and
        layers (``Placement.from_assignment``), with its report."""
        return Placement.from_assignment(gpu_LX, expert_LX, self.topology.num_gpus, self.num_experts,
                                         self.topology.num_nodes, order_LX=order_LX, topology=self.topology,
                                         model_layer_indices=self.model_layer_indices, report=report)


@dataclass(frozen=True)
class SolveOptions:
    """Options every solver accepts.

    time_limit_s: wall-clock budget; a solver stopped by it returns its best placement as FEASIBLE.
    seed: the same inputs and seed give the same placement.
    threads: worker threads (0 = the solver's default; the optimising solvers use one, see docs/solvers.md).
    params: the solver's own settings, named in its registration (``solvers.registry.SolverSpec.params``):
        weights such as ``balance_weight``, a MILP backend, EPLB's groups.
    """

    time_limit_s: float = 60.0
    seed: int = 0
    threads: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.time_limit_s > 0:
            raise ValueError(f"time limit ({self.time_limit_s}) must be positive")
        if self.seed < 0:
            raise ValueError(f"seed ({self.seed}) must be >= 0")
        require_at_most("seed", self.seed, MAX_SEED, "CP-SAT's seed is a 32-bit integer")
        if self.threads < 0:
            raise ValueError(f"threads ({self.threads}) must be >= 0")
        require_at_most("threads", self.threads, MAX_THREADS, "workers of one solve")
