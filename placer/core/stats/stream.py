"""Statistics of traces in one streaming pass: optional splits of the tokens, and a small sample kept for the
token-level summary figures.

``stats_from_traces(paths)`` is the one call downstream code needs; ``stats_from_batches`` does the same
for batches already in memory (synthetic traces, tests).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from placer.core.errors import InputError
from placer.core.stats.core import FastCounter, RoutingStats, merge_stats
from placer.core.trace.reader import DEFAULT_BATCH, TraceDataset, concat_batches
from placer.core.trace.schema import PHASES, RoutingBatch, TraceMeta

DEFAULT_SAMPLE_TOKENS = 8192

# What ``--by`` accepts: the trace field it reads (None: the token's index in trace order) and whether it takes
# a bucket width (``seq:1000``).
SPLIT_KINDS = {"phase": ("phase", False), "domain": ("domain", False), "seq": ("seq", True),
               "position": ("position", True), "window": (None, True)}
CHOICES = "phase, domain, seq:N, position:N or window:N"


@dataclass(frozen=True)
class SplitBy:
    """How tokens are grouped: ``phase`` (prefill/decode), ``domain``, ``seq:N`` (sequence ids in ranges of N),
    ``position:N`` (positions inside a sequence in ranges of N) or ``window:N`` (consecutive windows of N tokens
    in trace order)."""

    kind: str
    width: int = 1

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"--by {self.kind!r}: choose {CHOICES}")
        if self.width < 1:
            raise ValueError(f"--by {self.kind}:{self.width}: the range width must be a positive integer")

    @classmethod
    def parse(cls, text: str) -> "SplitBy":
        kind, _, width = text.partition(":")
        kind = kind.strip().lower()
        if kind not in SPLIT_KINDS:
            raise ValueError(f"--by {text!r}: choose {CHOICES}")
        needs_width = SPLIT_KINDS[kind][1]
        if needs_width and not width:
            raise ValueError(f"--by {text!r}: give the range width, e.g. {kind}:1000")
        if not needs_width and width:
            raise ValueError(f"--by {text!r}: {kind} takes no range width")
        try:
            w = int(width) if width else 1
        except ValueError:
            raise ValueError(f"--by {text!r}: range width {width!r} is not an integer") from None
        return cls(kind, w)

    @property
    def field(self) -> str | None:
        """The trace column the split reads (None for ``window``, which counts tokens in trace order)."""
        return SPLIT_KINDS[self.kind][0]

    def __str__(self) -> str:
        return f"{self.kind}:{self.width}" if SPLIT_KINDS[self.kind][1] else self.kind

    def codes(self, b: RoutingBatch, first: int = 0) -> np.ndarray:
        """The group code of each token of a batch read with ``fields`` including ``self.field``; ``first``: the
        index of the batch's first token in trace order."""
        if self.kind == "window":
            return (first + np.arange(len(b), dtype=np.int64)) // self.width
        values = {"phase": b.phase_T, "domain": b.domain_T, "seq": b.seq_T, "position": b.position_T}[self.kind]
        assert values is not None, f"batch read without the {self.field} field"
        return values.astype(np.int64) // self.width

    def name(self, code: int) -> str:
        if self.kind == "phase":
            return PHASES[code] if 0 <= code < len(PHASES) else f"phase {code}"
        if self.kind == "domain":
            return f"domain {code}"
        lo = code * self.width
        return f"{'tokens' if self.kind == 'window' else self.kind} {lo}-{lo + self.width - 1}"


class StatsBuilder:
    """Exact counts of a stream of batches, per split if asked, with an evenly spread token sample.

    ``sample_stride``: keep every n-th token (by its index over the whole stream) for the token-level
    summary figures; 0 keeps none. ``first_token``: the index of this stream's first token in the whole
    (a shard of a larger stream counted on its own), so that a shard keeps the sample tokens the whole
    stream would.

    Builders of disjoint shards of one stream add up with ``merge``, in any order: the counts are integer
    sums and the sample is kept in token order, so the merged result equals one builder fed the whole stream.
    """

    def __init__(self, meta: TraceMeta, by: SplitBy | None = None, sample_stride: int = 0,
                 first_token: int = 0) -> None:
        self.meta = meta
        self.by = by
        self.sample_stride = sample_stride
        self.counters: dict[int, FastCounter] = {}
        # (index of the piece's first token in the whole stream, experts, present, split codes)
        self.samples: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        self.seen = first_token

    def _counter(self, code: int) -> FastCounter:
        if code not in self.counters:
            self.counters[code] = FastCounter(*self.meta.shape)
        return self.counters[code]

    def add(self, b: RoutingBatch) -> None:
        n = len(b)
        codes = self.by.codes(b, self.seen) if self.by is not None else None
        if codes is None:
            self._counter(0).add(b.experts_TLK, b.present_TL)
        else:
            for code in np.unique(codes):
                mine = codes == code
                present = None if b.present_TL is None else b.present_TL[mine]
                self._counter(int(code)).add(b.experts_TLK[mine], present)
        if self.sample_stride:
            first = (-self.seen) % self.sample_stride
            idx = np.arange(first, n, self.sample_stride)
            if idx.size:
                self.samples.append((self.seen + first, b.experts_TLK[idx],
                                     None if b.present_TL is None else b.present_TL[idx],
                                     None if codes is None else codes[idx]))
        self.seen += n

    def merge(self, other: "StatsBuilder") -> "StatsBuilder":
        """Add the counts and sample of ``other``, a builder of another, disjoint shard of the same stream
        (same shape, split and sample stride); returns self."""
        if (other.meta.shape, other.by, other.sample_stride) != (self.meta.shape, self.by, self.sample_stride):
            raise ValueError(f"cannot merge statistics of shape {other.meta.shape}, split {other.by}, sample "
                             f"stride {other.sample_stride} into shape {self.meta.shape}, split {self.by}, "
                             f"sample stride {self.sample_stride}")
        for code, c in other.counters.items():
            if code in self.counters:
                self.counters[code].merge(c)
            else:
                self.counters[code] = copy.deepcopy(c)  # never share (and later add into) other's arrays
        self.samples = sorted(self.samples + other.samples, key=lambda piece: piece[0])
        self.seen = max(self.seen, other.seen)
        return self

    def result(self, sources: Sequence[str] = ()) -> RoutingStats:
        if not self.counters:
            raise InputError("no tokens to count")
        m = self.meta
        kw = dict(model_name=m.model_name, moe_layer_indices=tuple(m.moe_layer_indices), sources=tuple(sources))
        parts = {code: c.result(**kw) for code, c in sorted(self.counters.items())}
        sample = _concat_sample(self.samples)
        if self.by is None:
            out = parts[0]
            out.sample = sample
        else:
            out = merge_stats(list(parts.values()))
            out.model_name, out.extra = m.model_name, {"split_by": str(self.by)}
            out.sample = sample
            for code, p in parts.items():
                p.extra = {"split_by": str(self.by), "split_code": code}
                if sample is not None:
                    p.sample = _subset(sample, self.samples, code)
                out.splits[self.by.name(code)] = p
        return out


def _concat_sample(samples) -> RoutingBatch | None:
    if not samples:
        return None
    return concat_batches([RoutingBatch(experts_TLK=e, present_TL=p) for _, e, p, _ in samples])


def _subset(sample: RoutingBatch, samples, code: int) -> RoutingBatch | None:
    codes = np.concatenate([c for _, _, _, c in samples])
    mine = codes == code
    if not mine.any():
        return None
    return RoutingBatch(experts_TLK=sample.experts_TLK[mine],
                        present_TL=None if sample.present_TL is None else sample.present_TL[mine])


def sample_stride(total_tokens: int, sample_tokens: int) -> int:
    """Keep every n-th token so that about ``sample_tokens`` are kept (0: no sample)."""
    if sample_tokens <= 0:
        return 0
    return max(1, math.ceil(total_tokens / sample_tokens))


def stats_from_batches(meta: TraceMeta, batches: Iterable[RoutingBatch], by: SplitBy | None = None,
                       sample_tokens: int = 0, total_tokens: int | None = None,
                       sources: Sequence[str] = ()) -> RoutingStats:
    """Statistics of batches in memory (``total_tokens`` spreads the sample; without it, the first
    ``sample_tokens`` tokens are the sample)."""
    stride = sample_stride(total_tokens, sample_tokens) if total_tokens else (1 if sample_tokens else 0)
    builder = StatsBuilder(meta, by, stride)
    for b in batches:
        if not total_tokens and sample_tokens and builder.seen >= sample_tokens:
            builder.sample_stride = 0
        builder.add(b)
    return builder.result(sources)


def parse_split(by: SplitBy | str | None) -> SplitBy | None:
    """``--by`` text (or an already parsed split) as a ``SplitBy``; a one-line InputError if malformed."""
    if not isinstance(by, str):
        return by
    try:
        return SplitBy.parse(by)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def count_fields(ds: TraceDataset, by: SplitBy | None) -> list[str]:
    """The trace fields counting reads (expert ids, presence and the split's column, if it reads one); an
    InputError naming the first trace that lacks the split's column."""
    fields = ["experts", "present"]
    if by is not None and by.field is not None:
        fields.append(by.field)
        if by.kind == "domain":
            lacking = [r.path for r in ds.readers if not r.has_domain]
            if lacking:
                raise InputError(f"{lacking[0]}: column 'domain' is missing; --by domain needs traces with domains")
    return fields


def stats_from_traces(paths: Sequence[str | os.PathLike] | str | os.PathLike, by: SplitBy | str | None = None,
                      sample_tokens: int = DEFAULT_SAMPLE_TOKENS, batch_size: int = DEFAULT_BATCH,
                      progress: Callable[[int], None] | None = None) -> RoutingStats:
    """Exact statistics of one or more trace files (or directories of them) in one streaming pass.

    ``by`` splits the tokens (``"phase"``, ``"domain"``, ``"seq:1000"``, ``"position:512"``); the top-level
    counts are the sum of the splits. ``progress(n)`` is called with the tokens of every batch read (the
    command line passes a progress bar's ``advance``). Raises ``InputError`` for traces of different shapes, empty traces, or a
    split field the traces lack.
    """
    ds = TraceDataset(paths)
    by = parse_split(by)
    fields = count_fields(ds, by)
    builder = StatsBuilder(ds.meta, by, sample_stride(ds.num_tokens, sample_tokens))
    for b in ds.iter_batches(batch_size=batch_size, fields=fields):
        builder.add(b)
        if progress is not None:
            progress(len(b))
    return builder.result(sources=[str(p) for p in ds.paths])
