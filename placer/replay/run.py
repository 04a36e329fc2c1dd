"""A replay run from the command line's view: resolve the placements, validate everything before any process
starts, run the chosen backend, and build the report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from placer.core.errors import InputError, MoeplaceError
from placer.core.hardware import Hardware, load_topology_source
from placer.core.mode import TrafficMode
from placer.core.placement import Placement
from placer.core.placement_io import load_placement
from placer.core.topology import Topology
from placer.core.trace.reader import TraceReader
from placer.inputs import problem_from_stats, resolve_topology, stats_from_traces
from placer.progress import progress_bar
from placer.replay.config import BACKENDS, Case, ReplayConfig
from placer.replay.experts import DTYPES, CheckpointExperts
from placer.replay.launch import launch, torchrun_env
from placer.replay.predict import predict_cases
from placer.replay.report import build_report
from placer.replay.virtual import preflight, run_virtual, virtual_device
from placer.replay.worker import device_for, run_rank
from solvers import SOLVER_NAMES, SolveOptions, get_solver


@dataclass
class ReplayRequest:
    """What the user asked for (the command line's options, unvalidated)."""
    trace: Path
    placements: list[str]
    backend: str = "gloo"
    world_size: int | None = None
    hidden: int | None = None
    ffn: int | None = None
    dtype: str = "float32"
    model: Path | None = None
    tokens_per_step: int = 1024
    mode: str | None = None
    steps: int = 4
    warmup: int = 1
    layers: int | None = None
    seed: int = 0
    weight_bank: int = 0
    check: str = "all"
    nodes: int | None = None
    topology: Path | None = None
    redundant: int = 0
    timeout_s: float = 300.0
    device: str = "auto"
    threads: int = 0
    fail_rank: int | None = None
    fail_how: str = "raise"
    solve_time_limit_s: float = 60.0


def solve_on_trace(name: str, trace: Path, gpus: int, nodes: int | None, redundant: int, mode: TrafficMode,
                   topology: Path | str | None = None, time_limit_s: float = 60.0) -> Placement:
    """A placement from the solver registry, solved on the statistics of ``trace`` (the replayed trace: an
    in-sample placement; solve on another trace with ``moeplace solve`` for an out-of-sample test), for the
    hardware of ``topology`` (a hardware file or preset; default h100: what ``auto`` weighs balance with)."""
    topo = resolve_topology(gpus, nodes, topology)
    try:
        problem = problem_from_stats(stats_from_traces([trace]), topo, redundant, mode)
    except ValueError as exc:
        raise InputError(f"solver {name}: {exc}") from None
    return get_solver(name)(problem, SolveOptions(time_limit_s=time_limit_s, seed=0))


def _resolve(req: ReplayRequest, arg: str, mode: TrafficMode) -> tuple[str, Placement, str | None]:

    path = Path(arg)
    if path.exists():
        return path.stem, load_placement(path), str(path)
    name, _, r = arg.partition(":")
    if name in SOLVER_NAMES and (not r or r.isdigit()):
        if req.world_size is None:
            raise InputError(f"placement {arg!r} names a solver: give --world-size so it can be solved")
        redundant = int(r) if r else req.redundant
        p = solve_on_trace(name, req.trace, req.world_size, req.nodes, redundant, mode, req.topology,
                           req.solve_time_limit_s)
        return arg, p, None
    raise InputError(f"{arg}: placement file not found (nor a solver name: {', '.join(SOLVER_NAMES)}, "
                     f"optionally NAME:REDUNDANT)")


def prepare(req: ReplayRequest) -> ReplayConfig:
    """Check the request against the trace and the placements and build the run's config (InputError on any
    mismatch: nothing has started yet)."""
    if req.backend not in BACKENDS:
        raise InputError(f"--backend {req.backend!r} is not one of {', '.join(BACKENDS)}")
    if req.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {req.device!r} is not one of auto, cpu, cuda")
    if req.backend == "virtual":
        virtual_device(req.device)  # no GPU for --device cuda: before a placement is solved
    reader = TraceReader(req.trace)
    meta = reader.meta
    L = meta.num_layers if req.layers is None else req.layers
    if not 1 <= L <= meta.num_layers:
        raise InputError(f"--layers {req.layers}: the trace {req.trace} has {meta.num_layers} MoE layers")
    if not req.placements:
        raise InputError("give at least one placement")

    try:
        mode = None if req.mode is None else TrafficMode.parse(req.mode)
    except ValueError as exc:
        raise InputError(f"--{exc}") from None
    cases, names = [], set()
    for arg in req.placements:
        name, p, path = _resolve(req, arg, mode or TrafficMode.EP)
        where = path or f"solver {name}"
        if mode is None:
            mode = p.report.mode
        if req.world_size is not None and p.num_gpus != req.world_size:
            raise InputError(f"{where}: placement is for {p.num_gpus} GPUs, --world-size is {req.world_size}")
        if p.num_experts != meta.num_experts:
            raise InputError(f"{where}: placement has {p.num_experts} experts, trace {req.trace} has {meta.num_experts}")
        if p.num_layers != meta.num_layers:
            raise InputError(f"{where}: placement has {p.num_layers} layers, trace {req.trace} has {meta.num_layers}")
        if p.model_layer_indices is not None and tuple(p.model_layer_indices) != tuple(meta.moe_layer_indices):
            raise InputError(f"{where}: placement is for model layers {list(p.model_layer_indices)}, the trace "
                             f"has {list(meta.moe_layer_indices)}")
        if cases and p.num_gpus != cases[0].placement.num_gpus:
            raise InputError(f"{where}: placement is for {p.num_gpus} GPUs, {cases[0].name} for "
                             f"{cases[0].placement.num_gpus}; compare placements of one world size")
        while name in names:
            name = f"{name}'"
        names.add(name)
        cases.append(Case(name=name, placement=p, mode=mode, path=path))
    G = cases[0].placement.num_gpus

    hidden = 128 if req.hidden is None else req.hidden  # 0 is refused by ReplayConfig, not replaced
    ffn = 256 if req.ffn is None else req.ffn
    if req.model is not None:
        ck = CheckpointExperts(req.model, meta.moe_layer_indices, meta.num_experts)
        for opt, mine, theirs in (("--hidden", req.hidden, ck.hidden), ("--ffn", req.ffn, ck.ffn)):
            if mine is not None and mine != theirs:
                raise InputError(f"{req.model}: {opt} {mine} differs from the checkpoint's {theirs}")
        hidden, ffn = ck.hidden, ck.ffn
        if req.weight_bank:
            raise InputError("--weight-bank applies to random weights, not to --model")

    topo, topology_note = replay_topology(req, cases[0].placement, hidden, ffn)
    warning = cross_shape_warning(req.topology, hidden, ffn)
    nodes = topo.num_nodes
    if req.fail_rank is not None and req.backend == "virtual":
        raise InputError("--fail-rank is a test hook of the gloo and nccl backends")
    try:
        return ReplayConfig(
            trace=str(req.trace), cases=tuple(cases), num_experts=meta.num_experts, num_layers=L,
            num_tokens=max(1, min(reader.num_tokens, req.steps * req.tokens_per_step)),
            moe_layer_indices=tuple(meta.moe_layer_indices), hidden=hidden, ffn=ffn, dtype=req.dtype,
            model=None if req.model is None else str(req.model), tokens_per_step=req.tokens_per_step,
            steps=req.steps, warmup=req.warmup, seed=req.seed, weight_bank=req.weight_bank, check=req.check,
            nodes=nodes, topology=topo, timeout_s=req.timeout_s, device=req.device, threads=req.threads,
            fail_rank=req.fail_rank, fail_how=req.fail_how,
            extra={"topology": topology_note, **({"topology_warning": warning} if warning else {})},
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None


def replay_topology(req: ReplayRequest, first: Placement, hidden: int, ffn: int) -> tuple[Topology, str]:
    """The topology a replay models communication with (virtual backend) and predicts its times with (every
    backend), and a note saying where it came from.

    ``--topology`` (a hardware file, a preset or a flat topology file) combined with the placements' GPUs
    and ``--nodes`` through the shared path (``placer.inputs.resolve_topology``); else the first placement's
    own topology, else the h100 preset. Its layer shape is set to the replay's (hidden, FFN, dtype): an expert
    curve calibrated for another shape keeps its floor and intercept and scales its slope by FLOPs, and the
    note says so."""
    G = first.num_gpus
    if req.nodes is not None and req.nodes < 1:
        raise InputError(f"--nodes {req.nodes}: must be a positive integer")
    if req.nodes is not None and G % req.nodes:
        raise InputError(f"--nodes {req.nodes}: world size {G} must divide evenly into nodes")
    own = first.topology if first.topology is not None and first.topology.num_gpus == G else None
    default = own or Topology(num_gpus=G, num_nodes=first.num_nodes)
    topo = resolve_topology(None, req.nodes, req.topology, default=default)
    if topo.num_gpus != G:
        raise InputError(f"{req.topology}: topology has {topo.num_gpus} GPUs, the placements {G}")
    source = str(req.topology) if req.topology is not None else (
        "the first placement's topology" if own is not None else "the h100 preset")
    elem = torch.empty((), dtype=DTYPES.get(req.dtype, torch.float32)).element_size()
    shape = (topo.hidden_size, topo.expert_ffn_size, topo.dtype_bytes)
    note = f"{source}: expert curve for hidden {shape[0]} x FFN {shape[1]} ({shape[2]}-byte dtype)"
    if shape != (hidden, ffn, elem):
        note += f", scaled by FLOPs to the replay's {hidden} x {ffn} ({elem}-byte)"
    try:
        return topo.with_(hidden_size=hidden, expert_ffn_size=ffn, dtype_bytes=elem), note
    except ValueError as exc:
        raise InputError(f"topology: {exc}") from None


def cross_shape_warning(topology: Path | str | None, hidden: int, ffn: int) -> str | None:
    """One line when ``topology`` is a curve calibrated on a CPU for another layer shape than the replay's: scaling
    it by FLOPs keeps its floor, which on a CPU is far off (BENCHMARKS.md: a 256 x 512 curve predicted a 128 x 64
    expert's times with a median error of hundreds of percent); on a GPU the scaling is untested."""
    if topology is None:
        return None
    hw = load_topology_source(topology)
    if not isinstance(hw, Hardware) or hw.doc.get("metadata", {}).get("device") != "cpu":
        return None
    e = hw.doc["expert"]
    if (e["hidden_size"], e["ffn_size"]) == (hidden, ffn):
        return None
    return (f"{topology}: an expert curve calibrated on a CPU for {e['hidden_size']} x {e['ffn_size']} is scaled "
            f"by FLOPs to {hidden} x {ffn}, which on a CPU mispredicts badly; calibrate this shape "
            f"(--hidden {hidden} --ffn {ffn})")


def check_devices(cfg: ReplayConfig, backend: str) -> None:
    """NCCL needs one GPU per rank on this machine (when the command starts the ranks itself)."""
    if backend != "nccl":
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise InputError("--backend nccl needs CUDA GPUs and none is visible (use gloo, or virtual)")
    if n < cfg.world_size:
        raise InputError(f"--backend nccl needs one GPU per rank: world size {cfg.world_size} > {n} GPU(s) here "
                         f"(use --backend virtual on one GPU, or torchrun across nodes)")


def run(cfg: ReplayConfig, backend: str, quiet: bool | None = None) -> dict | None:
    """Run the replay and return the report (None on the ranks other than 0 under torchrun)."""
    total = len(cfg.schedule.runs())
    weights = cfg.expert_source().describe()
    t0 = time.perf_counter()
    env = torchrun_env() if backend != "virtual" else None
    if env is not None:
        rank, world, local = env
        if world != cfg.world_size:
            raise InputError(f"torchrun started {world} ranks, the placements are for {cfg.world_size} GPUs")
        with progress_bar(total, f"replay rank {rank}", unit="step", quiet=quiet if rank == 0 else True) as adv:
            cases = run_rank(rank, world, backend, "env://", cfg, progress=lambda run: run >= 0 and adv(1),
                             local_rank=local)
        if rank != 0:
            return None
        device, timer = str(device_for(backend, local)), ("cuda-events" if backend == "nccl" else "perf_counter")
    elif backend == "virtual":
        checked = preflight(cfg)  # a missing GPU or too little memory: one line before the progress bar
        with progress_bar(total, "replay (virtual)", unit="step", quiet=quiet) as adv:
            cases, device, timer = run_virtual(cfg, progress=lambda run: adv(1), device=checked)
    else:
        check_devices(cfg, backend)
        with progress_bar(total, f"replay ({backend}, {cfg.world_size} ranks)", unit="step", quiet=quiet) as adv:
            cases = launch(cfg, backend, on_progress=lambda run: adv(1))
        device = "cuda (one GPU per rank)" if backend == "nccl" else "cpu"
        timer = "cuda-events" if backend == "nccl" else "perf_counter"
    return build_report(cfg, backend, device, timer, cases, time.perf_counter() - t0, weights, predict_cases(cfg))


def verdict(report: dict) -> None:
    """Raise a one-line failure naming the first placement whose outputs differ from the reference."""
    for c in report["placements"]:
        chk = c["check"]
        if not chk.get("correct", True):
            detail = chk.get("error") or (f"{chk['mismatched_tokens']} of {chk['tokens_checked']} tokens differ from "
                                          f"the single-process reference (max relative error "
                                          f"{chk['max_rel_error']:.2e} > tolerance {chk['tolerance']:.1e}, "
                                          f"worst token {chk.get('worst_token')})")
            raise MoeplaceError(f"placement {c['name']}: {detail}")
