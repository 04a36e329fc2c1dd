"""``moeplace synth``: write a synthetic trace with planted structure."""

from __future__ import annotations

from pathlib import Path

import typer

from placer.cli.common import UsageError, console, kv_table
from placer.progress import progress_bar


def synth(
    layers: int = typer.Option(..., "--layers", "-L", help="MoE layers."),
    experts: int = typer.Option(..., "--experts", "-E", help="Routed experts per layer."),
    top_k: int = typer.Option(..., "--top-k", "-K", help="Experts chosen per token."),
    tokens: int = typer.Option(..., "--tokens", "-T", help="Tokens to generate."),
    out: Path = typer.Option(..., "--out", "-o", help="Output trace (.parquet)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same options and seed give the same file."),
    zipf: float = typer.Option(1.0, "--zipf", help="Zipf exponent of expert popularity (0 = uniform)."),
    affinity: float = typer.Option(
        0.6, "--affinity", help="Probability that a pick follows the planted structure (cluster or successor)."
    ),
    clusters: int = typer.Option(
        0, "--clusters", help="Planted clusters: groups of experts that co-activate and chain across layers "
        "(0 = none; then affinity follows a planted successor per expert)."
    ),
    domains: int = typer.Option(1, "--domains", help="Workload domains with different expert popularity."),
    domain_shift: float = typer.Option(0.5, "--domain-shift", help="Share of the popularity order each domain re-shuffles."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per sequence."),
    decode_fraction: float = typer.Option(0.25, "--decode-fraction", help="Tail share of each sequence marked decode."),
    drop_rate: float = typer.Option(0.0, "--drop-rate", help="Share of token-layers marked missing (as lossy logs)."),
    drift: float = typer.Option(
        0.0, "--drift", help="Traffic that changes over time: the share of each layer's popularity order re-shuffled "
        "from one period to the next (hot experts change), each period with its own domain mix (0 = none)."),
    drift_periods: int = typer.Option(8, "--drift-periods", help="Periods the trace is cut into with --drift."),
) -> None:
    """Write a synthetic routing trace with known structure (Zipf popularity, affinity, planted clusters).

    Streams in chunks with bounded memory; a DeepSeek-V3 shape (58 layers, 256 experts, top-8) of 1M
    tokens takes about 1.5 minutes on 2 cores.
    """
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.synth import SynthConfig, generate
    from placer.core.trace.writer import TraceWriter

    try:
        cfg = SynthConfig(
            layers=layers, experts=experts, top_k=top_k, tokens=tokens, seed=seed, zipf=zipf,
            affinity=affinity, clusters=clusters, domains=domains, domain_shift=domain_shift,
            seq_len=seq_len, decode_fraction=decode_fraction, drop_rate=drop_rate, drift=drift,
            drift_periods=drift_periods,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    meta, batches = generate(cfg)
    with TraceWriter(out, meta, with_domain=True, with_present=drop_rate > 0) as w, progress_bar(
        tokens, "synth", unit="tok"
    ) as advance:
        for b in batches:
            w.write(b)
            advance(len(b))
    console().print(kv_table(f"wrote {out}", [
        ("shape (L, E, K)", f"{layers} x {experts} x top-{top_k}"),
        ("tokens", f"{tokens:,}"),
        ("sequences", f"{-(-tokens // seq_len):,}"),
        ("planted", f"{clusters} clusters" if clusters else "successor per expert"),
        ("drift", f"{drift:g} per period, {drift_periods} periods" if drift else "none"),
        ("bytes", f"{out.stat().st_size:,}"),
    ]))


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
