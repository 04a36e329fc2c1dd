"""Small traces for the statistics tests: a worked example by hand, random traces with missing layers, and
synthetic traces written to files."""

from __future__ import annotations

import numpy as np
import pytest

from placer.core.trace import RoutingBatch, TraceMeta, TraceWriter
from placer.synth import SynthConfig, generate


def worked_example() -> tuple[TraceMeta, RoutingBatch]:
    """2 MoE layers, 4 experts, top-2, three tokens; token 2 has no routing at layer 1.

    token 0: layer 0 [1, 3], layer 1 [0, 2]
    token 1: layer 0 [3, 0], layer 1 [2, 1]
    token 2: layer 0 [1, 2], layer 1 missing
    """
    ex = np.array([[[1, 3], [0, 2]], [[3, 0], [2, 1]], [[1, 2], [0, 0]]], dtype=np.uint8)
    present = np.array([[True, True], [True, True], [True, False]])
    meta = TraceMeta(num_layers=2, num_experts=4, top_k=2, model_name="worked-example")
    b = RoutingBatch(experts_TLK=ex, present_TL=present, seq_T=np.array([0, 0, 1]), position_T=np.array([0, 1, 0]),
                     phase_T=np.array([0, 1, 0], dtype=np.int8))
    return meta, b


def random_batch(T: int, L: int, E: int, K: int, seed: int, drop: float = 0.2) -> RoutingBatch:
    """Random routing with K distinct experts per token and layer, and missing token-layers."""
    rng = np.random.default_rng(seed)
    ex = np.argsort(rng.random((T, L, E)), axis=2)[:, :, :K]
    present = rng.random((T, L)) >= drop if drop > 0 else None
    if present is not None:
        ex = np.where(present[:, :, None], ex, 0)
    dtype = np.uint8 if E <= 256 else np.uint16
    return RoutingBatch(experts_TLK=ex.astype(dtype), present_TL=present,
                        seq_T=np.arange(T) // 10, position_T=(np.arange(T) % 10).astype(np.int32),
                        phase_T=(np.arange(T) % 10 >= 7).astype(np.int8),
                        domain_T=(np.arange(T) // 30 % 3).astype(np.int16))


def loop_counts(ex_TLK: np.ndarray, present_TL: np.ndarray | None, E: int) -> dict[str, np.ndarray]:
    """A direct per-token loop: the counts written down from their definitions, one token at a time."""
    T, L, K = ex_TLK.shape
    pres = np.ones((T, L), bool) if present_TL is None else present_TL
    c = {"load_LE": np.zeros((L, E), int), "load1_LE": np.zeros((L, E), int), "coact_LEE": np.zeros((L, E, E), int),
         "trans_LEE": np.zeros((L - 1, E, E), int), "trans1_LEE": np.zeros((L - 1, E, E), int),
         "tokens_L": np.zeros(L, int), "pair_tokens_L": np.zeros(L - 1, int)}
    for t in range(T):
        for l in range(L):
            if not pres[t, l]:
                continue
            mine = [int(e) for e in ex_TLK[t, l]]
            c["tokens_L"][l] += 1
            c["load1_LE"][l, mine[0]] += 1
            for i in mine:
                c["load_LE"][l, i] += 1
                for j in mine:
                    c["coact_LEE"][l, i, j] += 1
            if l + 1 < L and pres[t, l + 1]:
                nxt = [int(e) for e in ex_TLK[t, l + 1]]
                c["pair_tokens_L"][l] += 1
                c["trans1_LEE"][l, mine[0], nxt[0]] += 1
                for i in mine:
                    for j in nxt:
                        c["trans_LEE"][l, i, j] += 1
    return c


def write_synth(path, tokens=4000, seed=0, split_at: int | None = None, **kw):
    """Write a synthetic trace (or, with ``split_at``, two files: tokens before and after it)."""
    cfg = SynthConfig(**{"layers": 4, "experts": 16, "top_k": 2, "tokens": tokens, "seed": seed, "clusters": 4,
                         "domains": 2, "seq_len": 64, **kw})
    meta, batches = generate(cfg)
    from placer.core.trace import concat_batches

    b = concat_batches(list(batches))
    with_present = b.present_TL is not None

    def write(p, part):
        with TraceWriter(p, meta, with_domain=True, with_present=with_present, row_group_size=1000) as w:
            w.write(part)
        return p

    if split_at is None:
        return write(path, b), meta, b
    first = RoutingBatch(**{k: (None if v is None else v[:split_at]) for k, v in vars(b).items()})
    second = RoutingBatch(**{k: (None if v is None else v[split_at:]) for k, v in vars(b).items()})
    a = write(path.with_name(path.stem + "-a.parquet"), first)
    c = write(path.with_name(path.stem + "-b.parquet"), second)
    return (a, c), meta, b


@pytest.fixture
def synth_trace(tmp_path):
    return write_synth(tmp_path / "t.parquet")
