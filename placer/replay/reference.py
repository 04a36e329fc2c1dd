"""The routing a replay runs, its steps, and the single-process reference every placement must reproduce.

The reference applies each MoE layer to every token directly (no ranks, no slots, no replicas):
``h <- h + sum_k w_k FFN_{e_k}(RMSNorm(h))`` for the token's K experts and gate weights from the trace; a token absent
from a layer (``present`` False) passes unchanged. It runs in float64 on CPU (float32 on a GPU) from the same
rounded inputs and weights as the replay, so only the replay's arithmetic in its dtype separates the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from placer.core.trace.reader import TraceReader, concat_batches
from placer.replay.experts import DTYPES, initial_hidden, rms_norm, swiglu
from placer.replay.plan import StepPlan, corrupt_plan, plan_step

# Largest relative error (per token, L2) accepted for each replay dtype, times sqrt(layers): rounding of the
# sums and matmuls in the dtype. Measured on 8 layers, hidden 64-256 (2048 tokens): largest error 1.2e-6 in
# float32 and 2.2e-2 in bfloat16, against tolerances of 1.4e-5 and 5.7e-2. A token sent to a wrong expert
# or weight is off by 0.1-0.5.
TOLERANCE = {"float64": 1e-10, "float32": 5e-6, "float16": 3e-3, "bfloat16": 2e-2}


def tolerance(dtype: str, num_layers: int) -> float:
    return TOLERANCE[dtype] * max(1.0, float(num_layers)) ** 0.5


@dataclass
class Routing:
    """The replayed tokens of a trace: [T, L, K] experts and weights, [T, L] present, [T] sequence ids (the
    first ``T`` tokens of the trace, first ``L`` MoE layers)."""

    experts_TLK: np.ndarray
    weights_TLK: np.ndarray
    present_TL: np.ndarray | None
    seq_T: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.experts_TLK.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts_TLK.shape[1])


def load_routing(path, num_tokens: int, num_layers: int) -> Routing:
    """Read the first ``num_tokens`` tokens of a trace (fewer if it is shorter), first ``num_layers`` layers."""
    reader = TraceReader(path)
    got, batches = 0, []
    for b in reader.iter_batches(batch_size=min(65536, max(num_tokens, 1)), fields=("experts", "weights", "present", "seq")):
        batches.append(b)
        got += len(b)
        if got >= num_tokens:
            break
    b = concat_batches(batches)
    n = min(num_tokens, len(b))
    present = None if b.present_TL is None else np.ascontiguousarray(b.present_TL[:n, :num_layers])
    if present is not None and present.all():
        present = None
    return Routing(experts_TLK=np.ascontiguousarray(b.experts_TLK[:n, :num_layers].astype(np.int64)),
                   weights_TLK=np.ascontiguousarray(b.weights_TLK[:n, :num_layers].astype(np.float32)),
                   present_TL=present, seq_T=b.seq_T[:n].astype(np.int64))


@dataclass(frozen=True)
class Schedule:
    """Which tokens each step replays. The trace is cut into steps of ``tokens_per_step`` consecutive tokens
    (the last may be shorter); measured step i replays trace step ``i mod available``; the warm-up steps
    replay the first steps again before the measured ones."""

    num_tokens: int
    tokens_per_step: int
    steps: int
    warmup: int

    @property
    def available(self) -> int:
        return -(-self.num_tokens // self.tokens_per_step)

    def trace_step(self, i: int) -> int:
        return i % self.available

    def token_range(self, i: int) -> tuple[int, int]:
        s = self.trace_step(i) * self.tokens_per_step
        return s, min(s + self.tokens_per_step, self.num_tokens)

    def runs(self) -> list[tuple[int, bool]]:
        """(measured step index, is_measured) in the order they run: warm-ups first."""
        return [(i % self.steps, False) for i in range(self.warmup)] + [(i, True) for i in range(self.steps)]

    def checked_steps(self, check: str) -> list[int]:
        """Measured steps whose outputs are checked: each trace step once ("all"), the first ("first"), none."""
        if check == "none":
            return []
        n = min(self.steps, self.available)
        return list(range(n if check == "all" else 1))


def step_slice(routing: Routing, start: int, stop: int):
    """(experts, weights, present, seq, token_index) of tokens start..stop-1."""
    pres = None if routing.present_TL is None else routing.present_TL[start:stop]
    return (routing.experts_TLK[start:stop], routing.weights_TLK[start:stop], pres, routing.seq_T[start:stop],
            np.arange(start, stop, dtype=np.int64))


@dataclass
class PlannedStep:
    """One step of one placement, ready to run: ``h0`` holds the step's input hidden states (all tokens)."""

    run: int
    step: int
    measured: bool
    start: int
    h0: torch.Tensor
    case_index: int
    plan: StepPlan


def planned_steps(schedule: Schedule, cases, routing: Routing, seed: int, hidden: int,
                  ranks=None) -> Iterator[PlannedStep]:
    """Every step of every placement in run order. Steps interleave the placements (step 0 of each, then
    step 1, ...), so a change of load on the machine during the run touches every placement alike. A case
    with ``corrupt`` set (test hook) has the plan of its first measured step broken."""
    for run, (i, measured) in enumerate(schedule.runs()):
        a, b = schedule.token_range(i)
        ex, w, pres, seq, tok = step_slice(routing, a, b)
        h0 = initial_hidden(seed, a, b - a, hidden)
        for ci, case in enumerate(cases):
            plan = plan_step(case.placement, ex, w, pres, seq, tok, case.mode, ranks=ranks)
            if case.corrupt and measured and i == 0:
                corrupt_plan(plan, case.placement, case.corrupt)
            yield PlannedStep(run, i, measured, a, h0, ci, plan)


def reference_outputs(routing: Routing, start: int, stop: int, source, hidden: int, dtype: str, seed: int,
                      device: torch.device, cache: dict | None = None) -> torch.Tensor:
    """[T, H] the final hidden states of tokens start..stop-1, computed directly (see the module docstring).

    cache: weights already built, by ``source.key``; weights of one layer are dropped after it, shared weight
    sets are kept (so a large model never holds more than one layer's experts)."""
    cache = {} if cache is None else cache
    dt = DTYPES[dtype]
    ref = torch.float64 if device.type == "cpu" else torch.float32
    ex, w, pres, _, _ = step_slice(routing, start, stop)
    T, L, K = ex.shape
    h = initial_hidden(seed, start, T, hidden).to(dt).to(device=device, dtype=ref)
    w_ref = torch.from_numpy(w).to(dt).to(device=device, dtype=ref)
    present = np.ones((T, L), dtype=bool) if pres is None else pres
    for l in range(L):
        out = h.clone()
        hn = rms_norm(h)
        t, k = np.nonzero(present[:, l, None] & np.ones((1, K), dtype=bool))
        e = ex[t, l, k]
        order = np.argsort(e, kind="stable")
        t, k, e = t[order], k[order], e[order]
        bounds = np.flatnonzero(np.diff(e)) + 1
        for tt, kk in zip(np.split(t, bounds), np.split(k, bounds)):
            if not len(tt):
                continue
            expert = int(ex[tt[0], l, kk[0]])
            key = source.key(l, expert)
            if key not in cache:
                cache[key] = tuple(x.to(dt).to(device=device, dtype=ref) for x in source.get(l, expert))
            weights = cache[key]
            rows = torch.from_numpy(tt).to(device)
            y = swiglu(hn.index_select(0, rows), weights) * w_ref[rows, l, torch.from_numpy(kk).to(device)][:, None]
            out.index_add_(0, rows, y)
        for key in [key for key in cache if key[:2] == (1, l)]:
            del cache[key]
        h = out
    return h


def compare(out_TH: torch.Tensor, ref_TH: torch.Tensor, tokens_T: np.ndarray, tol: float) -> dict:
    """Per-token relative L2 error of a replay's outputs against the reference; the check's verdict."""
    out = out_TH.to(ref_TH.dtype)
    err = (out - ref_TH).norm(dim=1) / ref_TH.norm(dim=1).clamp_min(1e-30)
    err = torch.nan_to_num(err, nan=float("inf")).cpu().numpy()
    bad = np.nonzero(err > tol)[0]
    res = {"tokens_checked": int(len(err)), "max_rel_error": float(err.max()) if len(err) else 0.0,
           "tolerance": tol, "mismatched_tokens": int(len(bad)), "correct": bool(len(bad) == 0)}
    if len(bad):
        i = int(bad[np.argmax(err[bad])])
        res["worst_token"] = int(tokens_T[i])
        res["mismatched_token_ids"] = [int(tokens_T[j]) for j in bad[:20]]
    return res


class Checker:
    """Compares a placement's final outputs with the reference, step by step (the reference of a step is
    computed once and reused for every placement: it depends on the trace and the weights only)."""

    def __init__(self, routing: Routing, schedule: Schedule, source, hidden: int, dtype: str, seed: int,
                 device: torch.device) -> None:
        self.routing, self.schedule, self.source = routing, schedule, source
        self.hidden, self.dtype, self.seed, self.device = hidden, dtype, seed, device
        self._ref: dict[int, torch.Tensor] = {}
        self._weights: dict = {}

    def reference(self, step: int) -> torch.Tensor:
        if step not in self._ref:
            a, b = self.schedule.token_range(step)
            self._ref[step] = reference_outputs(self.routing, a, b, self.source, self.hidden, self.dtype,
                                                self.seed, self.device, self._weights)
        return self._ref[step]

    def check(self, outputs: dict[int, list[tuple[np.ndarray, torch.Tensor]]]) -> dict:
        """outputs[step]: (trace token ids, [n, H] final outputs) from each rank. Every token of the step must
        come back exactly once, with its reference value."""
        if not outputs:
            return {"tokens_checked": 0, "correct": True, "note": "not checked (--check none)"}
        toks, outs, refs = [], [], []
        for step in sorted(outputs):
            a, b = self.schedule.token_range(step)
            tok = np.concatenate([t for t, _ in outputs[step]])
            out = torch.cat([o for _, o in outputs[step]])
            order = np.argsort(tok, kind="stable")
            tok = tok[order]
            if len(tok) != b - a or not (tok == np.arange(a, b)).all():
                missing = np.setdiff1d(np.arange(a, b), tok)
                what = f"token {int(missing[0])} never came home" if len(missing) else "a token came home twice"
                return {"tokens_checked": 0, "correct": False, "mismatched_tokens": b - a, "error": what,
                        "max_rel_error": float("inf"), "tolerance": None}
            toks.append(tok)
            outs.append(out[torch.from_numpy(order)].to(self.device))
            refs.append(self.reference(step))
        tol = tolerance(self.dtype, self.routing.num_layers)
        return compare(torch.cat(outs), torch.cat(refs), np.concatenate(toks), tol)
