"""The tensor side of a rank's data path, shared by the torch.distributed worker and the virtual backend:
pack the rows an exchange sends, unpack what it received into the new buffer, run the local experts.

Only the transport differs between backends: ``all_to_all_single`` between processes, or slicing inside
one process (virtual).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from placer.replay.experts import ExpertWeights, rms_norm, swiglu
from placer.replay.plan import RankCompute, RankExchange


@dataclass
class TExchange:
    """A ``RankExchange`` with its index arrays on the device (built before the timed region)."""

    send_idx: torch.Tensor
    send_splits: list[int]
    recv_splits: list[int]
    recv_dst: torch.Tensor
    own_src: torch.Tensor
    own_dst: torch.Tensor
    num_rows: int

    @classmethod
    def of(cls, ex: RankExchange, device: torch.device) -> "TExchange":
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return cls(t(ex.send_idx), [int(x) for x in ex.send_splits], [int(x) for x in ex.recv_splits],
                   t(ex.recv_dst), t(ex.own_src), t(ex.own_dst), ex.num_rows)


@dataclass
class TCompute:
    slot_rows: list[torch.Tensor]
    slot_weights: list[torch.Tensor]
    keep_rows: torch.Tensor
    tokens_computed: int

    @classmethod
    def of(cls, cp: RankCompute, dtype: torch.dtype, device: torch.device) -> "TCompute":
        rows = [torch.from_numpy(r).to(device) for r in cp.slot_rows]
        w = [torch.from_numpy(x).to(dtype=dtype).to(device)[:, None] for x in cp.slot_weights]
        keep = torch.from_numpy(np.nonzero(cp.keep)[0]).to(device)
        return cls(rows, w, keep, cp.tokens_computed)


def pack(ex: TExchange, buf: torch.Tensor) -> torch.Tensor:
    """[n_send, H] the rows this rank sends, grouped by destination."""
    return buf.index_select(0, ex.send_idx)


def unpack(ex: TExchange, buf: torch.Tensor, recv: torch.Tensor) -> torch.Tensor:
    """The new buffer: kept rows plus the sum of the received contributions of each token."""
    out = torch.zeros(ex.num_rows, buf.shape[1], dtype=buf.dtype, device=buf.device)
    if ex.own_dst.numel():
        out.index_copy_(0, ex.own_dst, buf.index_select(0, ex.own_src))
    if ex.recv_dst.numel():
        out.index_add_(0, ex.recv_dst, recv)
    return out


def apply_expert(out: torch.Tensor, xn: torch.Tensor, rows: torch.Tensor, w: torch.Tensor,
                 expert: ExpertWeights) -> None:
    """One slot's work: ``out[rows] += w * FFN(xn[rows])`` (gather the rows, the SwiGLU expert, the gate weight,
    scatter-add). ``moeplace calibrate`` times exactly this to fit the expert time curve."""
    out.index_add_(0, rows, swiglu(xn.index_select(0, rows), expert) * w)


def compute(cp: TCompute, x: torch.Tensor, experts: list[ExpertWeights]) -> torch.Tensor:
    """The rank's new contributions: its slots' weighted expert outputs on the normalised rows, plus the rows
    it keeps (the residual)."""
    out = torch.zeros_like(x)
    xn = rms_norm(x)
    for rows, w, expert in zip(cp.slot_rows, cp.slot_weights, experts):
        if rows.numel():
            apply_expert(out, xn, rows, w, expert)
    if cp.keep_rows.numel():
        out.index_add_(0, cp.keep_rows, x.index_select(0, cp.keep_rows))
    return out


class Timer:
    """Marks on a timeline; ``elapsed_ms(a, b)`` gives the time between two marks.

    On a GPU the marks are CUDA events on the current stream (the kernels' own time, launch gaps included,
    read after one synchronisation at the end of a step). On a CPU, ``compute_clock=True`` with torch on one
    thread reads the thread's CPU time (``time.thread_time``): compute alone, which the other processes of a
    shared machine do not inflate (a call longer than a scheduler slice is otherwise stretched by every
    process that shares its core); else wall time, ``time.perf_counter``. Only code that computes without
    waiting on other processes (the virtual backend's expert compute, calibrate) asks for the CPU clock.
    """

    def __init__(self, device: torch.device, compute_clock: bool = False) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._clock = time.thread_time if (compute_clock and not self.cuda and torch.get_num_threads() == 1) \
            else time.perf_counter
        self._marks: list = []

    @property
    def name(self) -> str:
        if self.cuda:
            return "cuda-events"
        return "thread_time" if self._clock is time.thread_time else "perf_counter"

    def reset(self) -> None:
        self._marks = []

    def mark(self) -> int:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._marks.append(ev)
        else:
            self._marks.append(self._clock())
        return len(self._marks) - 1

    def elapsed_ms(self, a: int, b: int) -> float:
        if self.cuda:
            return float(self._marks[a].elapsed_time(self._marks[b]))
        return (self._marks[b] - self._marks[a]) * 1e3

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
