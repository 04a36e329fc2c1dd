"""Timing one expert FFN by token count, as replay runs it, and fitting the knee model to the times.

What is timed is ``placer.replay.datapath.apply_expert``: one slot's work in a rank's expert compute (gather
the rows, the SwiGLU expert's three matmuls and its product, the gate weight, scatter-add), on ``n`` rows of a
``[hidden]`` layer with one expert of ``ffn`` intermediate size. On a GPU each call is timed with CUDA events
(launch gaps included, as in the project's H100 reference); on a CPU with ``time.perf_counter``.

Consecutive calls use different experts of a bank larger than the caches (``BANK_BYTES``), so that every call
reads its weights from memory, as in a MoE layer where each call is another expert.

The token counts form two interleaved grids: powers of two (1, 2, 4, ...) are **fitted**, the counts half-way
between them in log scale (3, 6, 12, ...) are **held out**: the curve's error on them says how well it
predicts batch sizes it was not fitted to. The repeats run in rounds, every count once per round in a shuffled
order, so that a change of load on the machine touches every count alike; each count's time is the median
over rounds. On a CPU with torch on one thread the clock is the thread's CPU time (``datapath.Timer``), as
the virtual backend's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from placer.core.errors import require_positive_ints
from placer.core.hardware import KneeFit, fit_knee
from placer.replay.datapath import Timer, apply_expert
from placer.replay.experts import DTYPES

# Bytes of expert weights the timed calls cycle through (at most 64 experts): more than a CPU's or a GPU's
# last-level cache, so that no call finds its weights there.
BANK_BYTES = 256 << 20


@dataclass(frozen=True)
class ExpertCurveSpec:
    """What to measure: the layer shape, the device, and how long to spend.

    max_tokens: the largest token count tried. max_call_ms: no count is tried beyond the first whose single
    call takes longer than this (on a slow device the linear region is reached well before max_tokens).
    budget_s: time for the timed rounds (at least ``min_rounds`` rounds are run whatever it says).
    """

    hidden: int
    ffn: int
    dtype: str = "float32"
    device: str = "cpu"
    max_tokens: int = 4096
    max_call_ms: float = 250.0
    budget_s: float = 40.0
    min_rounds: int = 5
    max_rounds: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive_ints(self, ("hidden", "ffn", "max_tokens", "min_rounds", "max_rounds"),
                              label=lambda name: name.replace("_", "-"))
        if self.max_tokens < 8:
            raise ValueError(f"max-tokens ({self.max_tokens}) must be at least 8: the fit needs several counts")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not self.budget_s > 0 or not self.max_call_ms > 0:
            raise ValueError(f"budget ({self.budget_s}) and max call time ({self.max_call_ms}) must be positive")


def token_grids(max_tokens: int) -> tuple[list[int], list[int]]:
    """(fitted counts: 1, 2, 4, ... <= max_tokens; held-out counts: 3, 6, 12, ... < max_tokens)."""
    fit = [1 << k for k in range(max_tokens.bit_length()) if 1 << k <= max_tokens]
    held = [3 << k for k in range(max_tokens.bit_length()) if 3 << k < max_tokens]
    return fit, held


@dataclass
class ExpertCurve:
    """Measured points ([n, 2]: tokens, median microseconds) fitted and held out, and the fit."""

    points: np.ndarray
    heldout: np.ndarray
    fit: KneeFit
    rounds: int
    seconds: float
    experts: int = 1
    clock: str = "perf_counter"


def measure_expert_curve(spec: ExpertCurveSpec, progress: Callable[[int], None] | None = None) -> ExpertCurve:
    """Time the expert at every count of both grids (see the module docstring) and fit the knee model to the
    fitted grid. ``progress(1)`` after each round."""
    t_start = time.perf_counter()
    device = torch.device(spec.device)
    dt = DTYPES[spec.dtype]
    g = torch.Generator().manual_seed(spec.seed)
    H, F = spec.hidden, spec.ffn
    # Step 0: a bank of distinct experts, used in turn, larger than the caches: each call reads its expert's
    # weights from memory, as a MoE layer (and replay) does, where consecutive calls are different experts.
    count = int(min(64, max(2, -(-BANK_BYTES // (3 * H * F * torch.empty((), dtype=dt).element_size())))))
    bank = [tuple(w.to(dt).to(device).contiguous() for w in (
        torch.randn(F, H, generator=g) / H ** 0.5, torch.randn(F, H, generator=g) / H ** 0.5,
        torch.randn(H, F, generator=g) / F ** 0.5)) for _ in range(count)]
    calls = [0]
    fit_n, held_n = token_grids(spec.max_tokens)
    counts = sorted(fit_n + held_n)
    n_max = counts[-1]
    xn = torch.randn(n_max, H, generator=g).to(dt).to(device)
    w = torch.rand(n_max, 1, generator=g).to(dt).to(device)
    out = torch.zeros(n_max, H, dtype=dt, device=device)
    rows = {n: torch.arange(n, device=device) for n in counts}
    timer = Timer(device, compute_clock=True)

    def call_us(n: int) -> float:
        expert = bank[calls[0] % count]
        calls[0] += 1
        timer.reset()
        a = timer.mark()
        apply_expert(out, xn, rows[n], w[:n], expert)
        b = timer.mark()
        timer.synchronize()
        return timer.elapsed_ms(a, b) * 1e3

    # Step 1: warm up and find the counts worth timing (up to the first whose call exceeds max_call_ms).
    kept, cost = [], {}
    for n in counts:
        call_us(n)
        kept.append(n)
        cost[n] = float(np.median([call_us(n) for _ in range(3)]))
        if cost[n] > spec.max_call_ms * 1e3:
            break
    # Cheap counts are timed several times a round (up to 8), so that their medians rest on as many samples
    # as noise on short calls needs, for little time.
    per_round = {n: int(min(8, max(1, max(cost.values()) / (4 * cost[n])))) for n in kept}
    fit_n = [n for n in fit_n if n in kept]
    held_n = [n for n in held_n if n in kept]
    if len(fit_n) < 3:
        fit_n, held_n = sorted(fit_n + held_n), []  # a very slow device: fit every count measured
    # Step 2: timed rounds, every count once per round in a shuffled order, until the budget is spent.
    rng = np.random.default_rng(spec.seed)
    times: dict[int, list[float]] = {n: [] for n in kept}
    t0 = time.perf_counter()
    rounds = 0
    while rounds < spec.max_rounds and (rounds < spec.min_rounds or time.perf_counter() - t0 < spec.budget_s):
        for n in rng.permutation(kept):
            times[int(n)].extend(call_us(int(n)) for _ in range(per_round[int(n)]))
        rounds += 1
        if progress is not None:
            progress(1)
    med = {n: float(np.median(v)) for n, v in times.items()}
    points = np.array([[n, med[n]] for n in fit_n], dtype=np.float64)
    heldout = np.array([[n, med[n]] for n in held_n], dtype=np.float64).reshape(-1, 2)
    fit = fit_knee(points[:, 0], points[:, 1])
    return ExpertCurve(points=points, heldout=heldout, fit=fit, rounds=rounds, seconds=time.perf_counter() - t_start,
                       experts=count, clock=timer.name)
