"""Small traces and placements for the replay tests (4 layers, 8 experts, top-2, 4 GPUs in 2 nodes)."""

from __future__ import annotations

import numpy as np
import pytest

from placer.core.placement import Placement, SolveReport
from placer.core.placement_io import save_placement
from placer.replay.config import Case, ReplayConfig

L, E, G = 4, 8, 4


def write_trace(path, tokens=600, layers=L, experts=E, top_k=2, drop_rate=0.05, seed=1):
    from placer.synth import SynthConfig, generate
    from placer.core.trace.writer import TraceWriter

    meta, batches = generate(SynthConfig(layers=layers, experts=experts, top_k=top_k, tokens=tokens, seed=seed,
                                         clusters=2, seq_len=50, drop_rate=drop_rate))
    with TraceWriter(path, meta, with_present=drop_rate > 0) as w:
        for b in batches:
            w.write(b)
    return path


def plain_placement():
    """Contiguous: GPU g holds experts 2g, 2g+1 at every layer."""
    return Placement(np.tile(np.arange(E), (L, 1)), num_gpus=G, num_experts=E, num_nodes=2, report=SolveReport(solver="contiguous"))


def redundant_placement():
    """Three slots per GPU: experts 0-3 have two replicas each, on different GPUs; layers differ."""
    rows = []
    for l in range(L):
        perm = np.roll(np.arange(E), l)
        rows.append([perm[0], perm[1], perm[4], perm[2], perm[3], perm[5], perm[6], perm[7], perm[0],
                     perm[1], perm[2], perm[3]])
    return Placement(np.array(rows), num_gpus=G, num_experts=E, num_nodes=2)


@pytest.fixture(scope="session")
def small_trace(tmp_path_factory):
    return write_trace(tmp_path_factory.mktemp("replay") / "t.parquet")


@pytest.fixture(scope="session")
def placement_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("placements")
    return save_placement(plain_placement(), d / "plain.json"), save_placement(redundant_placement(), d / "redundant.json")


def make_config(trace, cases, **kw):
    base = dict(trace=str(trace), cases=tuple(cases), num_experts=E, num_layers=L, num_tokens=600,
                moe_layer_indices=tuple(range(L)), hidden=32, ffn=48, tokens_per_step=256, steps=3, warmup=1,
                nodes=2, threads=1)
    base.update(kw)
    return ReplayConfig(**base)


def all_cases(corrupt=True):
    cases = [Case(f"{n}-{m}", p, m) for n, p in (("plain", plain_placement()), ("redundant", redundant_placement()))
             for m in ("ep", "coherent")]
    if corrupt:
        cases += [Case("bad-expert", redundant_placement(), "coherent", corrupt="expert"),
                  Case("bad-weight", plain_placement(), "ep", corrupt="weight")]
    return cases
