"""``moeplace calibrate``: measure this machine's expert FFN time curve (and links) into a hardware file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from placer.calibrate.run import CalibrateRequest, calibrate as run_calibrate, plan
from placer.cli.common import console, kv_table, print_json
from placer.core.fileio import prepare_output, write_json_atomic
from placer.progress import progress_bar


def calibrate(
    out: Path = typer.Option(..., "--out", "-o", help="Hardware file (JSON) to write, atomically."),
    model: Optional[Path] = typer.Option(
        None, "--model", help="Hugging Face MoE checkpoint folder: the layer shape (hidden_size, "
        "moe_intermediate_size or intermediate_size) from its config.json."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="Hidden size of the layer (without --model)."),
    ffn: Optional[int] = typer.Option(None, "--ffn", help="Intermediate size of one expert (without --model)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on a GPU, float32 on a CPU), float32, "
                              "bfloat16, float16 or float64."),
    device: str = typer.Option("auto", "--device", help="cuda, cpu or auto (a GPU if there is one)."),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", help="Largest token count per expert timed (default 16384 on a GPU, 1024 on a CPU)."),
    max_call_ms: Optional[float] = typer.Option(
        None, "--max-call-ms", help="Stop at the first token count whose call takes longer (default 50 on a GPU, "
        "250 on a CPU)."),
    budget: float = typer.Option(40.0, "--budget", help="Seconds of timed rounds for the expert curve (at least 5 "
                                 "rounds whatever it says)."),
    threads: int = typer.Option(
        0, "--threads", help="torch CPU threads (0: 1 on a CPU, torch's default on a GPU). On a CPU one thread is "
        "timed in CPU time, which other processes do not stretch; replay with the same --threads."),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="gloo or nccl: also measure all-to-all bandwidth and latency between ranks "
        "(with --world-size; under torchrun, the ranks torchrun started, across nodes)."),
    world_size: Optional[int] = typer.Option(None, "--world-size", "-G", help="Ranks this command starts to measure the links."),
    link_repeats: int = typer.Option(10, "--link-repeats", help="Timed all-to-all calls per message size."),
    preset: str = typer.Option("h100", "--preset", help="Preset for what is not measured (links without "
                               "--backend, the network on one node): h100, h200 or a100."),
    timeout: float = typer.Option(300.0, "--timeout", help="Stop every rank if none makes progress for this long."),
    ranks_per_node: Optional[int] = typer.Option(
        None, "--ranks-per-node", hidden=True, help="Test hook: split the ranks into nodes of this many (default: "
        "torchrun's LOCAL_WORLD_SIZE, else one node); on one machine the 'network' is this machine's transport."),
    as_json: bool = typer.Option(False, "--json", help="Print the hardware file's content as JSON."),
) -> None:
    """Measure this machine and write a hardware file that solve, evaluate, replay (and simulate) take with
    --topology, combined with their --gpus/--nodes (the file describes the machine, not how many GPUs).

    The expert FFN time curve: one SwiGLU expert of the layer shape, timed as replay runs it at token counts
    1, 2, 4, ... (fitted) and 3, 6, 12, ... (held out), fitted to the knee model of docs/cost-model.md (a flat
    launch-bound floor, then a line); the file and the summary give the fit's error on both. With --backend
    and --world-size, all-to-all bandwidth and latency with variable splits inside a node (and, under
    torchrun across nodes, across nodes); what is not measured comes from --preset and says so. Details:
    docs/calibrate.md.
    """
    prepare_output(out)
    req = CalibrateRequest(model=model, hidden=hidden, ffn=ffn, dtype=dtype, device=device, max_tokens=max_tokens,
                           max_call_ms=max_call_ms, budget_s=budget, threads=threads, backend=backend,
                           world_size=world_size, link_repeats=link_repeats, timeout_s=timeout, preset=preset,
                           ranks_per_node=ranks_per_node)
    checked = plan(req)  # a wrong option is one line, before the progress bar starts
    with progress_bar(None, "calibrate (expert rounds, link sizes)", unit="step") as advance:
        doc = run_calibrate(req, progress=advance, link_progress=lambda step: step >= 0 and advance(1),
                            checked=checked)
    if doc is None:  # a rank other than 0 under torchrun
        return
    write_json_atomic(out, doc)
    if as_json:
        print_json(doc)
        return
    _print_summary(doc, out)


def _pct(fit: dict | None, key: str = "max_rel_error") -> str:
    return "-" if not fit or fit.get(key) is None else f"{100 * fit[key]:.1f} %"


def _print_summary(doc: dict, out: Path) -> None:
    e, meta = doc["expert"], doc["metadata"]
    fit, held = e["fit"], e["fit"].get("heldout")
    fitted = [int(p[0]) for p in e["points"]]
    rows = [
        ("device", f"{meta['device']}: {e['device']}" + (f", driver {meta['driver']}" if meta.get("driver") else "")
         + f", torch {meta['torch']}, {meta['torch_threads']} thread(s)"),
        ("layer shape", f"hidden {e['hidden_size']} x FFN {e['ffn_size']}, {e['dtype']}"),
        ("clock", {"thread_time": "the thread's CPU time (one thread: other processes do not stretch it)",
                   "cuda-events": "CUDA events", "perf_counter": "wall time"}.get(e.get("clock"), "-")),
        ("expert curve", f"floor {e['floor_us']:.1f} us, then {e['intercept_us']:.1f} us + tokens at "
                         f"{e['tflops']:.3g} TFLOP/s (knee at {e['knee_tokens']:.0f} tokens)"),
        ("fit error", f"max {_pct(fit)}, median {_pct(fit, 'median_rel_error')} on the {fit['points']} fitted "
                      f"counts ({fitted[0]}..{fitted[-1]} tokens)"),
        ("held-out error", "-" if not held else f"max {_pct(held)}, median {_pct(held, 'median_rel_error')} on "
                                               f"{held['points']} counts not fitted"),
    ]
    for cls, label in (("intra", "link in a node"), ("inter", "link across nodes")):
        ln = doc["links"][cls]
        measured = ln["source"].startswith("measured")
        rows.append((label, f"{ln['bandwidth_gbs']:.4g} GB/s, {ln['latency_us']:.3g} us latency"
                            + (f" (measured, {ln['backend']}, {ln['world_size']} ranks; fit error max {_pct(ln['fit'])})"
                               if measured else f" ({ln['source'].split(': preset ')[0]}, preset "
                                                f"{ln['source'].split(': preset ')[1].split(':')[0]})")))
    rows.append(("wall time", f"{meta['wall_time_s']:.1f} s"))
    console().print(kv_table(f"wrote {out}", rows))


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
