"""The settings of a replay run (validated, picklable: they travel to every rank process)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from placer.core.limits import MAX_HIDDEN, MAX_STEPS, MAX_THREADS, require_at_most
from placer.core.mode import TrafficMode
from placer.core.placement import Placement
from placer.replay.experts import DTYPES, CheckpointExperts, RandomExperts
from placer.replay.reference import Schedule
from placer.core.topology import Topology

BACKENDS = ("gloo", "nccl", "virtual")
CHECKS = ("all", "first", "none")
FAIL_HOW = ("raise", "exit", "hang")


@dataclass(frozen=True)
class Case:
    """One placement replayed in one traffic mode. ``corrupt`` is a test hook ("expert" or "weight"): the
    plan of the first measured step is deliberately broken (``plan.corrupt_plan``) so the check must fail."""

    name: str
    placement: Placement
    mode: TrafficMode
    path: str | None = None
    corrupt: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", TrafficMode.parse(self.mode))


@dataclass(frozen=True)
class ReplayConfig:
    """Everything a rank needs.

    num_tokens / num_layers: the replayed tokens (first of the trace) and MoE layers (first of the trace).
    model: a checkpoint folder for real expert weights (then hidden / ffn are the checkpoint's).
    nodes: ranks are split into this many nodes (rank r on node r // (G / nodes)) for the link classes.
    topology: the links the virtual backend models communication with.
    timeout_s: a run in which no rank reports progress for this long is stopped.
    device: the virtual backend's device (auto: a GPU if there is one). threads: CPU threads per process
        (0: all cores for the virtual backend, cores / ranks for gloo ranks).
    fail_rank / fail_how: test hook: that rank raises, exits or hangs at its first measured step.
    """

    trace: str
    cases: tuple[Case, ...]
    num_experts: int
    num_layers: int
    num_tokens: int
    moe_layer_indices: tuple[int, ...]
    hidden: int = 128
    ffn: int = 256
    dtype: str = "float32"
    model: str | None = None
    tokens_per_step: int = 1024
    steps: int = 4
    warmup: int = 1
    seed: int = 0
    weight_bank: int = 0
    check: str = "all"
    nodes: int = 1
    topology: Topology | None = None
    timeout_s: float = 300.0
    device: str = "auto"
    threads: int = 0
    fail_rank: int | None = None
    fail_how: str = "raise"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cases:
            raise ValueError("no placement to replay")
        for name in ("hidden", "ffn", "tokens_per_step", "steps", "num_tokens", "num_layers"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup ({self.warmup}) must be >= 0")
        for name, bound, why in (("hidden", MAX_HIDDEN, "a model's hidden size"), ("ffn", MAX_HIDDEN, "an expert's "
                                 "FFN size"), ("steps", MAX_STEPS, "steps of one replay"), ("warmup", MAX_STEPS,
                                 "steps of one replay"), ("threads", MAX_THREADS, "threads per process")):
            require_at_most(name, getattr(self, name), bound, why)
        if self.weight_bank < 0:
            raise ValueError(f"weight-bank ({self.weight_bank}) must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.check not in CHECKS:
            raise ValueError(f"check {self.check!r} is not one of {', '.join(CHECKS)}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout ({self.timeout_s}) must be positive")
        if self.threads < 0:
            raise ValueError(f"threads ({self.threads}) must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda")
        if self.fail_how not in FAIL_HOW:
            raise ValueError(f"fail-how {self.fail_how!r} is not one of {', '.join(FAIL_HOW)}")
        G = self.world_size
        for c in self.cases:
            p = c.placement
            if p.num_gpus != G:
                raise ValueError(f"placement {c.name} is for {p.num_gpus} GPUs, {self.cases[0].name} for {G}")
            if p.num_experts != self.num_experts:
                raise ValueError(f"placement {c.name} places {p.num_experts} experts, the trace has {self.num_experts}")
            if p.num_layers < self.num_layers:
                raise ValueError(f"placement {c.name} has {p.num_layers} layers, the replay needs {self.num_layers}")
        if G % self.nodes:
            raise ValueError(f"world size ({G}) must divide evenly into nodes ({self.nodes})")
        if self.fail_rank is not None and not 0 <= self.fail_rank < G:
            raise ValueError(f"fail-rank ({self.fail_rank}) must be a rank in [0, {G})")

    @property
    def world_size(self) -> int:
        return self.cases[0].placement.num_gpus

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.num_tokens, self.tokens_per_step, self.steps, self.warmup)

    def node_of_rank(self) -> np.ndarray:
        return np.arange(self.world_size) // (self.world_size // self.nodes)

    def expert_source(self):
        if self.model is not None:
            return CheckpointExperts(self.model, self.moe_layer_indices, self.num_experts)
        return RandomExperts(self.hidden, self.ffn, self.num_experts, self.seed, self.weight_bank)
