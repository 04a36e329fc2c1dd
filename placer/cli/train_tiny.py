"""``moeplace train-tiny``: rebuild the bundled tiny MoE model from the Python standard library sources."""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import typer

from placer.cli.common import UsageError, console, kv_table
from placer.core.fileio import output_folder
from placer.progress import progress_bar, stderr_console
from placer.tiny import BUNDLED_MODEL_DIR
from placer.tiny.card import model_card
from placer.tiny.corpus import load_corpus
from placer.tiny.train import TinyConfig, train


def train_tiny(
    out: Path = typer.Option(
        None, "--out", "-o", help="Model folder to write (default: the bundled placer/bundled/tiny-moe)."
    ),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    seq_len: int = typer.Option(256, "--seq-len", help="Bytes per window."),
    layers: int = typer.Option(8, "--layers", help="Decoder layers (all MoE)."),
    experts: int = typer.Option(16, "--experts", help="Routed experts per layer."),
    top_k: int = typer.Option(2, "--top-k", help="Experts per token."),
    hidden: int = typer.Option(128, "--hidden", help="Hidden size."),
    expert_ffn: int = typer.Option(64, "--expert-ffn", help="Intermediate size of each expert."),
    aux_loss_coef: float = typer.Option(
        0.05, "--aux-loss-coef", help="Weight of the per-layer load-balancing loss (1 when balanced)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (initialisation and batches)."),
    threads: int = typer.Option(1, "--threads", help="torch threads (the result depends on it)."),
    eval_every: int = typer.Option(250, "--eval-every", help="Steps between held-out evaluations."),
    allow_corpus_mismatch: bool = typer.Option(
        False, "--allow-corpus-mismatch",
        help="Train even if this interpreter's standard library differs from the manifest (other weights).",
    ),
) -> None:
    """Train the bundled tiny MoE language model (Qwen3-MoE config, byte vocabulary) on CPU.

    The corpus is the running interpreter's standard library, checked file by file against
    placer/tiny/stdlib_manifest.json (made with CPython 3.11.7; `python -m placer.tiny.corpus` rewrites it).
    The defaults made the bundled weights (23 minutes on a shared 2-core machine); the same seed, corpus,
    torch version and thread count give the same weights (checked on a toy budget by the tests). The
    folder is replaced only when training has finished.
    """
    out = Path(out) if out is not None else BUNDLED_MODEL_DIR
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: --out exists and is not a folder")
    try:
        cfg = TinyConfig(
            layers=layers, experts=experts, top_k=top_k, hidden=hidden, expert_ffn=expert_ffn, steps=steps,
            batch_size=batch_size, seq_len=seq_len, aux_loss_coef=aux_loss_coef, seed=seed, threads=threads,
            eval_every=eval_every, warmup=min(100, steps // 10),
        )
    except ValueError as exc:
        raise UsageError(f"train-tiny: {exc}") from None
    corpus = load_corpus(allow_mismatch=allow_corpus_mismatch)
    output_folder(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is meant to be read by all
    try:
        with progress_bar(cfg.steps, "train-tiny", unit="step") as advance:
            summary = train(cfg, tmp, corpus, advance=advance, log=lambda s: stderr_console.print(s, highlight=False))
        argv = sys.argv[sys.argv.index("train-tiny"):] if "train-tiny" in sys.argv else ["train-tiny"]
        command = "moeplace " + " ".join(shlex.quote(a) for a in argv)
        (tmp / "README.md").write_text(model_card(summary, command), encoding="utf-8")
        for f in tmp.iterdir():
            f.chmod(0o644)
        # Swap the finished folder in: the old one is removed only now.
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    f = summary["final"]["heldout"]
    console().print(kv_table(f"wrote {out}", [
        ("parameters", f"{summary['parameters']:,}"),
        ("tokens seen", f"{summary['tokens_seen']:,}"),
        ("held-out loss", f"{f['loss']:.3f} nats/byte ({f['bits_per_byte']:.3f} bits/byte)"),
        ("busiest expert / fair share", f"{f['max_expert_share_over_fair']:.2f}"),
        ("wall time", f"{summary['wall_time_s'] / 60:.1f} min"),
    ]))


def register(app: typer.Typer) -> None:
    app.command("train-tiny")(train_tiny)
