"""``moeplace replay``: run the expert-parallel data path of a trace under placements; prove and time them."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from placer.cli.common import console
from placer.core.fileio import prepare_output, write_json_atomic
from placer.progress import warn
from placer.replay.report import report_table


def replay(
    trace: Path = typer.Argument(..., help="Trace to replay (.parquet)."),
    placements: List[str] = typer.Argument(
        ..., help="Placement files (JSON), or solver names NAME or NAME:REDUNDANT (solved on this trace's "
        "statistics for --world-size GPUs). The first is the baseline of the speedups."),
    backend: str = typer.Option(
        "gloo", "--backend", "-b", help="gloo: one CPU process per rank; nccl: one process per GPU; virtual: all "
        "ranks in this process (one GPU, or CPU), expert compute timed per rank, communication modelled."),
    world_size: Optional[int] = typer.Option(
        None, "--world-size", "-G", help="EP ranks; must equal the placements' GPU count (default: theirs)."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="Hidden size of a token (default 128; --model: the checkpoint's)."),
    ffn: Optional[int] = typer.Option(None, "--ffn", help="Expert FFN (intermediate) size (default 256; --model: the checkpoint's)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16, float16 or float64."),
    model: Optional[Path] = typer.Option(
        None, "--model", help="Hugging Face MoE checkpoint folder: take the shapes and the real expert weights "
        "from it (the trace's MoE layers are the model's decoder layers listed in its moe_layer_indices)."),
    tokens_per_step: int = typer.Option(1024, "--tokens-per-step", help="Tokens of the trace replayed per step (all ranks together)."),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="ep (dispatch home -> experts -> home every layer) or coherent (tokens stay where "
        "their experts ran); default: the first placement's."),
    steps: int = typer.Option(4, "--steps", help="Measured steps (consecutive tokens of the trace; it wraps around)."),
    warmup: int = typer.Option(1, "--warmup", help="Unmeasured steps first."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Replay only the first N MoE layers (default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report (JSON) here, atomically."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random expert weights and input hidden states."),
    weight_bank: int = typer.Option(
        0, "--weight-bank", help="Random experts share N weight sets (same compute, bounded memory for large "
        "shapes; the check then cannot tell apart experts of one set); 0: every expert its own."),
    check: str = typer.Option("all", "--check", help="Compare outputs with the reference for all measured steps, the first, or none."),
    nodes: Optional[int] = typer.Option(None, "--nodes", help="Nodes the ranks are split into, for intra/inter-node bytes (default: the placement's)."),
    topology: Optional[Path] = typer.Option(
        None, "--topology", help="Hardware file (moeplace calibrate), preset name (h100, h200, a100) or topology "
        "JSON: the links the virtual backend models, and the cost model's predicted times beside the measured "
        "ones (default: the first placement's topology, else h100)."),
    redundant: int = typer.Option(0, "--redundant", help="Redundant slots per layer for solver-named placements without :R."),
    timeout: float = typer.Option(
        300.0, "--timeout", help="Stop every rank and fail if no rank makes progress for this many seconds."),
    device: str = typer.Option("auto", "--device", help="virtual backend: cuda, cpu or auto (a GPU if there is one)."),
    threads: int = typer.Option(0, "--threads", help="CPU threads per process (0: cores / ranks for gloo, all for virtual)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    fail_rank: Optional[int] = typer.Option(None, "--fail-rank", hidden=True, help="Test hook: this rank fails at its first measured step."),
    fail_how: str = typer.Option("raise", "--fail-how", hidden=True, help="Test hook: raise, exit or hang."),
) -> None:
    """Replay a trace's expert-parallel data path under placements; check every token and time the layers.

    Each rank holds SwiGLU experts for the slots its GPU has in the placement; tokens start on their home
    rank (seq_id mod ranks, attention data parallel). Per MoE layer the ranks swap row counts and then hidden
    states with all_to_all_single (variable splits), run their experts and combine with the trace's gate
    weights: out = h + sum_k w_k FFN_k(RMSNorm(h)) (MoE blocks only, no attention). Every token's final output is
    compared with a single-process reference; the report gives per-layer and total time, the compute
    straggler, bytes per rank and link class, tokens computed per rank, and each placement's speedup over the
    first, and the cost model's predicted step time and speedup with the same topology beside them (with the
    rank correlation of predicted and measured speedups). Exit code 1 if a placement's outputs differ from the
    reference.

    Under torchrun (RANK/WORLD_SIZE set) the command runs as one rank (env:// rendezvous); rank 0 reports.
    """
    # lazy: loads torch, the solvers (numba, OR-Tools) and jsonschema; kept out of `moeplace --help`
    from placer.replay.run import ReplayRequest, prepare, run, verdict

    if out is not None:
        prepare_output(out)
    cfg = prepare(ReplayRequest(
        trace=trace, placements=list(placements), backend=backend, world_size=world_size, hidden=hidden, ffn=ffn,
        dtype=dtype, model=model, tokens_per_step=tokens_per_step, mode=mode, steps=steps, warmup=warmup,
        layers=layers, seed=seed, weight_bank=weight_bank, check=check, nodes=nodes, topology=topology,
        redundant=redundant, timeout_s=timeout, device=device, threads=threads, fail_rank=fail_rank,
        fail_how=fail_how,
    ))
    if cfg.extra.get("topology_warning") and os.environ.get("RANK", "0") == "0":  # once under torchrun
        warn(cfg.extra["topology_warning"])
    report = run(cfg, backend)
    if report is None:  # a rank other than 0 under torchrun
        return
    if out is not None:
        write_json_atomic(out, report)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        con = console(min_width=140)
        con.print(report_table(report))
        checked = [c["check"] for c in report["placements"] if c["check"].get("tokens_checked")]
        if checked:
            con.print(f"checked {checked[0]['tokens_checked']:,} tokens per placement against the single-process "
                      f"reference: largest relative error {max(c['max_rel_error'] for c in checked):.1e} "
                      f"(tolerance {checked[0]['tolerance']:.1e})")
        pred = report.get("prediction")
        if pred:
            rho = pred["rank_correlation"]
            con.print(f"predicted: the cost model with {report['topology']['source']}; rank correlation of predicted "
                      f"and measured speedups {'-' if rho is None else f'{rho:.2f}'} over {pred['placements']} "
                      f"placements; largest step-time error {pred['max_abs_step_error']:.0%}")
        con.print(f"weights: {report['weights']}; timer: {report['timer']}; communication: {report['communication']}"
                  + (f"; report: {out}" if out is not None else ""))
    verdict(report)


def _unwrapped(doc: str) -> str:
    """The docstring with each paragraph on one line (the help re-wraps it to the terminal)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


def register(app: typer.Typer) -> None:
    app.command("replay", help=_unwrapped(replay.__doc__ or ""))(replay)
