"""``moeplace calibrate`` as a function: measure this machine and build its hardware document.

1. The expert FFN time curve of one layer shape on one device (``placer.calibrate.expert``), fitted to the
   knee model, with its error on the fitted and the held-out token counts.
2. With a backend and a world size, the all-to-all links (``placer.calibrate.links``): ranks started here
   (one node) or, under torchrun, the ranks torchrun started (across nodes).
3. What is not measured (the network on one node, every link without a backend) is taken from a preset and
   says so in its ``source``. The metadata names the machine, the libraries, the date and every fit's error.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import placer
from placer.calibrate.links import LinkSpec, check_world, fit_points, measure_rank
from placer.core.errors import InputError
from placer.core.fileio import read_model_config
from placer.core.limits import MAX_CALL_TOKENS, MAX_HIDDEN, MAX_THREADS, require_at_most
from placer.core.hardware import (
    LinkFit, expert_section, hardware_doc, link_section, load_preset, preset_names, read_hardware,
)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


@dataclass
class CalibrateRequest:
    """The command line's options (unvalidated)."""

    model: Path | None = None
    hidden: int | None = None
    ffn: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_tokens: int | None = None
    max_call_ms: float | None = None
    budget_s: float = 40.0
    threads: int = 0
    backend: str | None = None
    world_size: int | None = None
    link_repeats: int = 10
    timeout_s: float = 300.0
    preset: str = "h100"
    seed: int = 0
    ranks_per_node: int | None = None


def layer_shape(req: CalibrateRequest) -> tuple[int, int, str]:
    """(hidden, FFN, where they came from): ``--model``'s config.json or ``--hidden/--ffn``."""
    if req.model is not None:
        path, cfg = read_model_config(req.model)
        cfg = cfg.get("text_config", cfg)
        hidden = cfg.get("hidden_size")
        # The routed experts' intermediate size: moe_intermediate_size (Qwen-MoE, DeepSeek), else the model's
        # intermediate_size (Mixtral, OLMoE, GPT-OSS have no dense MLP of another size).
        ffn = cfg.get("moe_intermediate_size") or cfg.get("intermediate_size")
        for name, v in (("hidden_size", hidden), ("moe_intermediate_size or intermediate_size", ffn)):
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{path}: field '{name}' is {v!r}, expected a positive integer")
        for opt, mine, theirs in (("--hidden", req.hidden, hidden), ("--ffn", req.ffn, ffn)):
            if mine is not None and mine != theirs:
                raise InputError(f"{req.model}: {opt} {mine} differs from the model's {theirs}")
        return hidden, ffn, f"model {req.model}"
    if req.hidden is None or req.ffn is None:
        raise InputError("give the layer shape to calibrate: --model DIR, or --hidden H and --ffn F")
    for opt, v in (("--hidden", req.hidden), ("--ffn", req.ffn)):
        if v < 1:
            raise InputError(f"{opt} must be a positive integer, got {v}")
    return req.hidden, req.ffn, "--hidden/--ffn"


def resolve_device(choice: str) -> str:
    import torch  # lazy: torch takes seconds to import

    if choice not in ("auto", "cuda", "cpu"):
        raise InputError(f"--device {choice!r} is not one of auto, cuda, cpu")
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise InputError("--device cuda: no CUDA GPU is visible on this machine (use --device cpu)")
    return "cuda" if choice == "cuda" or (choice == "auto" and has_cuda) else "cpu"


def machine_metadata(device: str, threads: int) -> dict[str, Any]:
    """Where and with what the curves were measured: the device, driver and library versions, the date."""
    import torch  # lazy: torch takes seconds to import

    meta: dict[str, Any] = {
        "kind": "calibrate",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "moeplace_version": getattr(placer, "__version__", None),
        "command": " ".join(["moeplace"] + sys.argv[1:]) if sys.argv and "moeplace" in sys.argv[0] else None,
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        meta.update({
            "gpu": torch.cuda.get_device_name(), "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
            "driver": _driver_version(),
        })
    return meta


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    """The GPU driver's version (nvidia-smi, else /proc/driver/nvidia/version), or None."""
    if shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if res.returncode == 0 and res.stdout.strip():
                return res.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None


@dataclass
class CalibratePlan:
    """A checked request: what is measured, and how (``plan``)."""

    base: Any  # the preset for what is not measured
    hidden: int
    ffn: int
    shape_from: str
    env: tuple[int, int, int] | None  # torchrun's (rank, world, local rank)
    device: str
    dtype: str
    threads: int
    spec: Any  # ExpertCurveSpec
    links: Any  # LinkSpec or None


def plan(req: CalibrateRequest) -> CalibratePlan:
    """Check every option (InputError naming the first wrong one) before anything is measured or printed."""
    from placer.calibrate.expert import ExpertCurveSpec  # lazy: placer.calibrate.expert imports torch
    from placer.replay.launch import torchrun_env  # lazy: placer.replay.launch imports torch

    if req.preset not in preset_names():
        raise InputError(f"--preset {req.preset!r} does not exist; presets: {', '.join(preset_names())}")
    base = load_preset(req.preset)
    hidden, ffn, shape_from = layer_shape(req)
    try:  # the bounds of what one process can time (placer/core/limits.py)
        for name, value, bound, why in (("--hidden", hidden, MAX_HIDDEN, "a model's hidden size"),
                                        ("--ffn", ffn, MAX_HIDDEN, "an expert's FFN size"),
                                        ("--max-tokens", req.max_tokens, MAX_CALL_TOKENS, "tokens of one timed call"),
                                        ("--threads", req.threads, MAX_THREADS, "threads per process")):
            require_at_most(name, value, bound, why)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    env = torchrun_env()
    if req.backend is not None and req.backend not in ("gloo", "nccl"):
        raise InputError(f"--backend {req.backend!r} is not one of gloo, nccl")
    if (req.backend is None) != (req.world_size is None) and env is None:
        raise InputError("give --backend and --world-size together to measure the links")
    if env is not None and req.backend is None:
        raise InputError("under torchrun give --backend gloo or nccl: the ranks are there to measure the links")
    if req.backend is not None and env is None:
        check_world(req.backend, req.world_size)  # before anything starts
    device = resolve_device(req.device if env is None or req.backend != "nccl" else "cuda")
    dtype = req.dtype if req.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if dtype not in DTYPE_BYTES:
        raise InputError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPE_BYTES)}")
    if req.threads < 0:
        raise InputError(f"--threads must be >= 0, got {req.threads}")
    # On a CPU one thread by default: timed in CPU time, which a loaded machine does not stretch (with two
    # threads on a shared 2-core machine the wall-clock curve's fit error reached 89 %).
    threads = req.threads or (1 if device == "cpu" else 0)
    try:
        spec = ExpertCurveSpec(
            hidden=hidden, ffn=ffn, dtype=dtype, device=device,
            max_tokens=req.max_tokens or (16384 if device == "cuda" else 1024),
            max_call_ms=req.max_call_ms or (50.0 if device == "cuda" else 250.0),
            budget_s=req.budget_s, seed=req.seed)
        links = None
        if req.backend is not None:
            world = env[1] if env is not None else req.world_size
            if env is not None and req.world_size is not None and req.world_size != world:
                raise InputError(f"torchrun started {world} ranks, --world-size is {req.world_size}")
            rpn = req.ranks_per_node or (int(os.environ.get("LOCAL_WORLD_SIZE", world)) if env is not None else None)
            if rpn is not None and (rpn < 1 or world % rpn):
                raise InputError(f"--ranks-per-node {rpn}: {world} ranks must divide into nodes of that many")
            links = LinkSpec(backend=req.backend, world_size=world, repeats=req.link_repeats, timeout_s=req.timeout_s,
                             seed=req.seed, ranks_per_node=rpn)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return CalibratePlan(base=base, hidden=hidden, ffn=ffn, shape_from=shape_from, env=env, device=device,
                         dtype=dtype, threads=threads, spec=spec, links=links)


def calibrate(req: CalibrateRequest, progress: Callable[[int], None] | None = None,
              link_progress: Callable[[int], None] | None = None, checked: CalibratePlan | None = None) -> dict | None:
    """Measure and return the hardware document (None on the ranks other than 0 under torchrun). ``checked``:
    the request's ``plan`` when the caller checked it already."""
    import torch  # lazy: torch takes seconds to import

    before = torch.get_num_threads()
    try:
        return _calibrate(req, checked or plan(req), progress, link_progress)
    finally:
        torch.set_num_threads(before)


def _calibrate(req: CalibrateRequest, pl: CalibratePlan, progress: Callable[[int], None] | None,
               link_progress: Callable[[int], None] | None) -> dict | None:
    import torch  # lazy: torch takes seconds to import

    from placer.calibrate.expert import measure_expert_curve  # lazy: placer.calibrate.expert imports torch

    t0 = time.perf_counter()
    base, hidden, ffn, shape_from, env = pl.base, pl.hidden, pl.ffn, pl.shape_from, pl.env
    device, dtype, spec, links = pl.device, pl.dtype, pl.spec, pl.links
    if env is not None and device == "cuda":
        torch.cuda.set_device(env[2] % torch.cuda.device_count())
    if pl.threads:
        torch.set_num_threads(pl.threads)

    # Step 1: the links (under torchrun every rank takes part first; rank 0 then measures the expert).
    link_points = {"intra": None, "inter": None}
    if links is not None and env is not None:
        rank, world, local = env
        got = measure_rank(rank, world, links.backend, "env://", links, link_progress or (lambda s: None),
                           local_rank=local)
        if rank != 0:
            return None
        link_points = got
    # Step 2: the expert curve on this process's device.
    curve = measure_expert_curve(spec, progress=progress)
    if links is not None and env is None:
        from placer.replay.launch import launch_ranks  # lazy: placer.replay.launch imports torch

        link_points = launch_ranks(links.world_size, links.backend, measure_rank, links, timeout_s=links.timeout_s,
                                   threads=1, on_progress=link_progress, what="calibrate")
    # Step 3: the document.
    device_name = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    threads = torch.get_num_threads()
    expert = expert_section(
        hidden, ffn, dtype, DTYPE_BYTES[dtype], curve.fit,
        f"measured: one SwiGLU expert as replay runs it (placer.replay.datapath.apply_expert), {shape_from}, on "
        f"{device} ({device_name}), clock {curve.clock}, {curve.experts} distinct experts in turn, median of "
        f"{curve.rounds} rounds; fitted to token counts 1, 2, 4, ..., held out 3, 6, 12, ...",
        points=curve.points, heldout=curve.heldout, device=device_name, clock=curve.clock, threads=threads)
    sections = {}
    for cls, name in (("intra", "inside a node"), ("inter", "across nodes")):
        fitted = fit_points(link_points.get(cls))
        if fitted is not None:
            fit, pts = fitted
            sections[cls] = link_section(
                fit, f"measured: all_to_all_single with variable splits {name}, {links.backend}, "
                f"{links.world_size} ranks, median of {links.repeats} calls per size",
                points=pts, backend=links.backend, world_size=links.world_size)
        else:
            theirs = base.doc["links"][cls]
            why = ("no --backend" if links is None else "one node: no link across nodes to measure" if cls == "inter"
                   else "one rank per node: no link inside a node to measure")
            fit, cap = LinkFit(theirs["latency_us"], theirs["bandwidth_gbs"]), ""
            intra = sections.get("intra")
            if cls == "inter" and intra is not None and intra["source"].startswith("measured") and \
                    fit.bandwidth_gbs > intra["bandwidth_gbs"]:
                # The network is not faster than the link measured inside the node.
                fit = LinkFit(max(fit.latency_us, intra["latency_us"]), intra["bandwidth_gbs"])
                cap = ", capped at the link measured inside the node"
            sections[cls] = link_section(fit, f"not measured ({why}{cap}): preset {req.preset}: {theirs['source']}")
    meta = machine_metadata(device, threads)
    meta["wall_time_s"] = round(time.perf_counter() - t0, 1)
    desc = f"calibrated on {device_name} ({device}), {hidden} x {ffn} {dtype} expert"
    doc = hardware_doc(expert, sections["intra"], sections["inter"], meta, description=desc)
    read_hardware(doc, "calibrate's output")  # what is written must read back
    return doc
