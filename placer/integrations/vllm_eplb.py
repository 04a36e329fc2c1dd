"""moeplace's balancer as vLLM's EPLB policy: vLLM measures expert load while it serves and, every
``--eplb-config step_interval`` steps, asks its policy where every expert copy goes; this policy answers with a
moeplace solver (load only: the load window is all vLLM passes), within a time limit small enough for a serving
loop, and moves as few expert weights as it can.

vLLM's contract (``vllm/distributed/eplb/policy/abstract.py``, ``AbstractEplbPolicy.rebalance_experts``):

- vLLM 0.19 and later (checked: 0.19.0, 0.20.0, 0.28.0, 0.32.0, 0.33.0): ``rebalance_experts(weight, num_replicas,
  num_groups, num_nodes, num_ranks, old_global_expert_indices=None) -> phy2log``. ``weight`` [layers, logical
  experts] is the load window moved to the CPU (``EplbState.rearrange`` and ``async_worker.run_rebalance_experts``
  call ``.cpu()``), ``old_global_expert_indices`` is the current ``physical_to_logical_map`` [layers, num_replicas]
  on the CPU (its docstring says [layers, num_logical_experts]; the callers pass the physical map), and the
  answer is one int64 tensor [layers, num_replicas] on the CPU (the async worker asserts the CPU device); vLLM
  derives the inverse maps itself. ``MoeplaceEplbPolicy``.
- vLLM 0.13 to 0.18 (checked: 0.13.0, 0.15.0, 0.17.0, 0.18.0): the same arguments (0.13 without the current map,
  0.15 to 0.18 pass it on the device) and the answer ``(phy2log, log2phy, logcnt)``: int64 [L, P], [L, E,
  num_redundant + 1] padded with -1, [L, E], on ``weight``'s device (``DefaultEplbPolicy`` there; ``EplbState``
  pads ``log2phy`` to its own width and copies it in). ``MoeplaceEplbPolicyTriple``. vLLM 0.12 and earlier had no
  policy class (``rebalance_algo.rebalance_experts``, a function).

Slots are GPU-major, as in moeplace: slot p sits on rank ``p // (num_replicas / num_ranks)``. ``num_groups`` is not
used: moeplace balances every GPU's load with the global policy, where DeepSeek's hierarchical policy (vLLM's
default when the expert groups divide among the nodes) keeps groups inside a node for group-limited routing.

Migration (when vLLM passes the current map and the number of slots is unchanged): the solver's layout sets the
target, each layer's busiest GPU load at most ``tolerance`` (a relative share, default 0) above the solver's, and
every layer takes the first of these that reaches it:

1. the current layout: no weights move;
2. the current layout repaired by swaps of two copies between the busiest GPU and another (each the swap that
   lowers the busiest GPU most; two copies move per swap): little drift of the load needs little change;
3. the solver's layout aligned to the current one, layer by layer (``placer.core.moves.align``: its GPUs renamed,
   nodes kept whole, so that as many expert copies as possible stay on the GPU that holds them, which leaves the
   GPU loads as they are; a staying expert left in its current slot, so vLLM copies nothing for it, as its own
   ``preserve_intragpu_slots`` does).

Moves are counted as ``placer.core.moves.count_moves`` does: copies loaded onto a GPU that did not hold the expert.
``solvers/rebalance.py`` steps from a current placement towards a full re-solve within a budget of moves, judged
by the project objective; the repair above stops instead as soon as the busiest GPU reaches the target.

On a DeepSeek-V3 shape (58 layers, 256 experts + 32 copies, 32 GPUs) whose load drifted by a log-normal factor of
sigma 0.3, vLLM's default policy (DeepSeek's EPLB, from scratch) would move 15,959 of 16,704 copies for a busiest
GPU 1.0045 x the mean, and the solver's layout alone 15,995 for 1.0021; the steps above moved 3,564 for 1.0019
(tolerance 0.01: 2,286 moves for 1.010).

vLLM calls the policy on every rank with the same (all-reduced) window, and each rank moves weights by its own
answer, so every rank must compute the same map: the solve stops on its nominal budgets only
(``solvers.common.nominal_budgets_only``), never on the wall clock, and the steps above are deterministic. When
vLLM asks for more copies than the GPUs can hold apart (more than experts x (GPUs - 1)), which moeplace's solvers
refuse, DeepSeek's EPLB (vLLM's own algorithm) places them, with a warning on the ``moeplace.vllm_eplb`` logger.

Registering it (vLLM has one policy name, "default", which its config accepts; the policy is looked up from
``vllm.distributed.eplb.policy.EPLB_POLICIES`` when a model is added): call ``register()`` in every vLLM process,
or set ``MOEPLACE_VLLM_EPLB=1`` and vLLM loads it through the ``vllm.general_plugins`` entry point moeplace
installs (``vllm_plugin``; without the variable the plug-in does nothing). Registering compiles the solver's numba
kernels (``warm_up``), so that vLLM's first rebalance does not. docs/vllm-eplb.md has the details and timings.

Importing this module needs neither vLLM nor torch; the policy imports torch when vLLM calls it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from placer.core.placement import Placement
from placer.core.topology import preset

log = logging.getLogger("moeplace.vllm_eplb")

ENV_ENABLE = "MOEPLACE_VLLM_EPLB"
ENV_SOLVER = "MOEPLACE_VLLM_EPLB_SOLVER"
ENV_TIME_LIMIT = "MOEPLACE_VLLM_EPLB_TIME_LIMIT"
ENV_TOLERANCE = "MOEPLACE_VLLM_EPLB_TOLERANCE"
ENV_WARM_UP = "MOEPLACE_VLLM_EPLB_WARM_UP"
# vLLM releases whose policy returns phy2log only (earlier ones with a policy class return the three maps).
PHY2LOG_ONLY_SINCE = (0, 19)


@dataclass
class RebalanceReport:
    """What one call decided: layers re-placed and kept, expert copies moved to another GPU."""

    layers_changed: int
    layers_kept: int
    copies_moved: int
    max_over_mean_before: float | None
    max_over_mean_after: float


# -- the pure core: NumPy in, NumPy out ------------------------------------------------------------------------------
def gpu_max_loads(phy2log_LP: np.ndarray, load_LE: np.ndarray, num_ranks: int) -> np.ndarray:
    """[L] each layer's busiest GPU load, a logical expert's load split evenly among its copies."""
    L, P = phy2log_LP.shape
    E = load_LE.shape[1]
    cnt = np.stack([np.bincount(row, minlength=E) for row in phy2log_LP])              # [L, E]
    per_slot = np.take_along_axis(load_LE / np.maximum(cnt, 1), phy2log_LP, axis=1)   # [L, P]
    return per_slot.reshape(L, num_ranks, P // num_ranks).sum(axis=2).max(axis=1)


def valid_map(phy2log_LP: Any, shape: tuple[int, int], num_experts: int) -> np.ndarray | None:
    """``phy2log_LP`` as int64 if it is a complete placement of ``shape`` (every expert in a slot), else None."""
    if phy2log_LP is None:
        return None
    m = np.asarray(phy2log_LP)
    if m.shape != shape or m.dtype.kind not in "iu" or m.min() < 0 or m.max() >= num_experts:
        return None
    m = m.astype(np.int64)
    if any(np.unique(row).size != num_experts for row in m):
        return None
    return m


def repair(old_P: np.ndarray, load_E: np.ndarray, num_ranks: int, target: float,
           max_swaps: int | None = None) -> np.ndarray:
    """``old_P`` improved by swaps of two expert copies between GPUs (the busiest GPU and another), each the swap
    that lowers the busiest GPU the most, until no GPU is above ``target`` or no swap helps: few moves (two per
    swap) where a little drift of the load needs little change. Copies per expert stay as they are, and no GPU
    gets a second copy of an expert."""
    row = old_P.copy()
    P = row.size
    G, S = num_ranks, P // num_ranks
    E = load_E.size
    cnt = np.bincount(row, minlength=E)
    w = load_E[row] / cnt[row]                                         # [P] load of each slot's copy
    gpu = np.arange(P) // S
    held = np.zeros((G, E), dtype=np.int64)
    np.add.at(held, (gpu, row), 1)
    gl = np.bincount(gpu, weights=w, minlength=G)
    for _ in range(max_swaps if max_swaps is not None else P):
        a = int(np.argmax(gl))
        if gl[a] <= target:
            break
        ia = np.arange(a * S, (a + 1) * S)
        j = np.nonzero(gpu != a)[0]
        b = gpu[j]
        new_a = gl[a] - w[ia][:, None] + w[j][None, :]                # [S, P - S]
        new_b = gl[b][None, :] - w[j][None, :] + w[ia][:, None]
        worse = np.maximum(new_a, new_b)
        forbid = (held[a][row[j]][None, :] > 0) | (held[b, row[ia][:, None]] > 0)
        worse[forbid] = np.inf
        k = int(np.argmin(worse))
        if not worse.flat[k] < gl[a] - 1e-12 * max(gl[a], 1.0):
            break
        i, jj = ia[k // j.size], j[k % j.size]
        ga, gb = a, gpu[jj]
        held[ga, row[i]] -= 1
        held[gb, row[jj]] -= 1
        row[i], row[jj] = row[jj], row[i]
        w[i], w[jj] = w[jj], w[i]
        held[ga, row[i]] += 1
        held[gb, row[jj]] += 1
        gl[ga], gl[gb] = new_a.flat[k], new_b.flat[k]
    return row


def rebalance(load_LE: np.ndarray, num_replicas: int, num_nodes: int, num_ranks: int,
              old_phy2log_LP: np.ndarray | None = None, *, solver: str = "auto", time_limit_s: float = 0.5,
              tolerance: float = 0.0, seed: int = 0) -> tuple[np.ndarray, RebalanceReport]:
    """[L, num_replicas] logical expert of each physical slot (GPU-major) for the expert loads ``load_LE`` [L, E],
    from moeplace's solver ``solver`` (load only, ``time_limit_s``), migration-aware when ``old_phy2log_LP`` is the
    current map (see the module docstring)."""
    # lazy: the solvers load numba and OR-Tools, and vLLM imports this plug-in in every process
    from placer.core.moves import align, count_moves
    from solvers import PlacementProblem, SolveOptions, get_solver
    from solvers.common import nominal_budgets_only
    from solvers.problem import max_redundant

    load = np.asarray(load_LE, dtype=np.float64)
    if load.ndim != 2:
        raise ValueError(f"weight must be [layers, experts], got shape {list(load.shape)}")
    load = np.where(np.isfinite(load) & (load > 0), load, 0.0)  # a window of counts; NaN or negative: no load
    L, E = load.shape
    num_nodes = max(int(num_nodes), 1)
    if num_ranks % num_nodes:
        num_nodes = 1  # as vLLM does when the ranks do not divide among the nodes

    def placement(rows: np.ndarray) -> Placement:
        return Placement(rows, num_gpus=num_ranks, num_experts=E, num_nodes=num_nodes)

    R = num_replicas - E
    if R > max_redundant(E, num_ranks):
        # More copies than the GPUs can hold apart: moeplace's solvers refuse (a second copy of an expert on a GPU
        # is a wasted slot), vLLM accepts it; DeepSeek's algorithm (vLLM's own) places them, as vLLM would.
        log.warning("moeplace EPLB: %d redundant slots for %d experts on %d GPUs cannot hold every copy of an "
                    "expert on a GPU of its own (at most %d); placed by DeepSeek's EPLB instead of %s, which puts "
                    "some copies of one expert on one GPU", R, E, num_ranks, max_redundant(E, num_ranks), solver)
        new = eplb_layout(load, num_replicas, num_nodes, num_ranks)
    else:
        problem = PlacementProblem(load, preset(num_ranks, num_nodes), num_redundant=R)
        # Nominal budgets only: vLLM runs the policy on every rank, and every rank must compute the same map.
        with nominal_budgets_only():
            solved = get_solver(solver)(problem, SolveOptions(time_limit_s=time_limit_s, seed=seed))
        new = np.array(solved.phy2log_LP, dtype=np.int64)  # a writable copy: vLLM gets tensors sharing its memory
    old = valid_map(old_phy2log_LP, (L, num_replicas), E)
    after = gpu_max_loads(new, load, num_ranks)
    mean = np.maximum(load.sum(axis=1) / num_ranks, 1e-300)
    if old is None:
        return new, RebalanceReport(L, 0, 0, None, float((after / mean).mean()))
    before = gpu_max_loads(old, load, num_ranks)
    out = old.copy()
    changed = 0
    for l in range(L):
        # Step 1: the current layout, if its busiest GPU is within tolerance of the solver's.
        target = after[l] * (1.0 + tolerance)
        if before[l] <= target:
            continue
        changed += 1
        # Step 2: the current layout repaired by a few swaps, if that reaches the target.
        fixed = repair(old[l], load[l], num_ranks, target)
        if gpu_max_loads(fixed[None], load[l][None], num_ranks)[0] <= target:
            out[l] = fixed
            continue
        # Step 3: the solver's layout, its GPUs renamed (nodes kept whole) to keep what stays in place.
        out[l] = align(placement(old[l:l + 1]), placement(new[l:l + 1])).phy2log_LP[0]
    final = gpu_max_loads(out, load, num_ranks)
    return out, RebalanceReport(changed, L - changed, count_moves(placement(old), placement(out)).total,
                                float((before / mean).mean()), float((final / mean).mean()))


def eplb_layout(load_LE: np.ndarray, num_replicas: int, num_nodes: int, num_ranks: int) -> np.ndarray:
    """[L, num_replicas] DeepSeek's EPLB layout (``solvers/eplb.py``, one expert group: the global policy, as vLLM
    runs it without groups that divide among the nodes), GPU-major; copies of one expert may share a GPU."""
    # lazy: the solvers load numba and OR-Tools, and vLLM imports this plug-in in every process
    from solvers.eplb import rebalance_layer

    L = load_LE.shape[0]
    S = num_replicas // num_ranks
    out = np.empty((L, num_replicas), dtype=np.int64)
    for l in range(L):
        expert, gpu, rank = rebalance_layer(load_LE[l], num_replicas, 1, num_nodes, num_ranks)
        out[l, gpu * S + rank] = expert
    return out


def warm_up(solver: str = "auto", time_limit_s: float = 0.5) -> float:
    """Compile (or load from numba's cache) the kernels ``solver`` searches with, and run the policy once on a small
    load window with a current map, so that vLLM's first rebalance does not pay for it; returns the seconds taken.
    Once per process and solver (``solvers/warmup.py`` remembers)."""
    # lazy: the solvers load numba and OR-Tools, and vLLM imports this plug-in in every process
    from solvers import get_solver

    t0 = time.perf_counter()
    get_solver(solver).compile("ep")
    # 2 layers x 32 experts + 8 copies on 4 GPUs: too many partitions to enumerate, so the local search's kernels
    # run, as on a real model's shape.
    rng = np.random.default_rng(0)
    load = rng.lognormal(0, 1, (2, 32)) * 100
    current = np.tile(np.arange(40) % 32, (2, 1))
    rebalance(load, 40, 1, 4, current, solver=solver, time_limit_s=time_limit_s)
    return time.perf_counter() - t0


# -- the policy classes vLLM calls -----------------------------------------------------------------------------------
class MoeplaceEplbPolicy:
    """vLLM EPLB policy (vLLM >= 0.19 contract): ``rebalance_experts(...) -> phy2log`` (int64, CPU).

    Settings are class attributes (subclass, or set them before vLLM starts): ``solver`` (a moeplace solver
    that takes load-only statistics: auto, greedy, eplb, cpsat, ...), ``time_limit_s`` (the solver's nominal budget;
    with auto's fixed work and the migration steps, a call of 58 layers x 288 slots on 32 GPUs took 0.4-0.9 s and
    48 x 128 on 8 GPUs 0.2 s at 0.5 s, on 2 busy cores, once the kernels are compiled: docs/vllm-eplb.md),
    ``tolerance`` (see the module docstring) and ``seed``.
    """

    solver: ClassVar[str] = "auto"
    time_limit_s: ClassVar[float] = 0.5
    tolerance: ClassVar[float] = 0.0
    seed: ClassVar[int] = 0
    last_report: ClassVar[RebalanceReport | None] = None

    @classmethod
    def _phy2log(cls, weight: Any, num_replicas: int, num_nodes: int, num_ranks: int,
                 old_global_expert_indices: Any = None) -> np.ndarray:
        # lazy: importing this module needs no torch (see the module docstring)
        import torch

        load = weight.detach().to(device="cpu", dtype=torch.float64).numpy()
        old = None if old_global_expert_indices is None else old_global_expert_indices.detach().cpu().numpy()
        phy2log, report = rebalance(load, int(num_replicas), int(num_nodes), int(num_ranks), old, solver=cls.solver,
                                    time_limit_s=cls.time_limit_s, tolerance=cls.tolerance, seed=cls.seed)
        cls.last_report = report
        log.info("moeplace EPLB (%s): %d layers re-placed, %d kept, %d expert copies moved; busiest GPU / mean "
                 "%s -> %.4f", cls.solver, report.layers_changed, report.layers_kept, report.copies_moved,
                 "-" if report.max_over_mean_before is None else f"{report.max_over_mean_before:.4f}",
                 report.max_over_mean_after)
        return phy2log

    @classmethod
    def rebalance_experts(cls, weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
                          old_global_expert_indices: Any = None) -> Any:
        """weight: [layers, logical experts] load; num_replicas: physical slots per layer (a multiple of
        num_ranks); num_groups: not used (see the module docstring); old_global_expert_indices: the current
        [layers, num_replicas] map or None. Returns phy2log [layers, num_replicas], int64, on the CPU."""
        # lazy: importing this module needs no torch (see the module docstring)
        import torch

        return torch.from_numpy(cls._phy2log(weight, num_replicas, num_nodes, num_ranks, old_global_expert_indices))


class MoeplaceEplbPolicyTriple(MoeplaceEplbPolicy):
    """vLLM EPLB policy (vLLM 0.13-0.18 contract): ``rebalance_experts(...) -> (phy2log, log2phy, logcnt)``, int64
    on ``weight``'s device; ``log2phy`` [L, E, num_replicas - E + 1] lists each expert's slots in increasing order,
    padded with -1."""

    @classmethod
    def rebalance_experts(cls, weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
                          old_global_expert_indices: Any = None) -> tuple[Any, Any, Any]:
        # lazy: importing this module needs no torch (see the module docstring)
        import torch

        phy2log = cls._phy2log(weight, num_replicas, num_nodes, num_ranks, old_global_expert_indices)
        log2phy, logcnt = inverse_maps(phy2log, int(weight.shape[1]), int(num_replicas) - int(weight.shape[1]) + 1)
        return tuple(torch.from_numpy(a).to(weight.device) for a in (phy2log, log2phy, logcnt))


def inverse_maps(phy2log_LP: np.ndarray, num_experts: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """([L, E, width] each expert's slots in increasing order padded with -1, [L, E] copies per expert)."""
    L, P = phy2log_LP.shape
    logcnt = np.stack([np.bincount(row, minlength=num_experts) for row in phy2log_LP]).astype(np.int64)
    log2phy = np.full((L, num_experts, width), -1, dtype=np.int64)
    for l in range(L):
        order = np.argsort(phy2log_LP[l], kind="stable")           # slots grouped by expert, increasing inside
        rank = np.arange(P) - np.repeat(np.cumsum(logcnt[l]) - logcnt[l], logcnt[l])
        log2phy[l, phy2log_LP[l][order], rank] = order
    return log2phy, logcnt


# -- registration ----------------------------------------------------------------------------------------------------
def policy_for(vllm_version: str) -> type[MoeplaceEplbPolicy]:
    """The policy class whose contract the given vLLM release has."""
    m = re.match(r"(\d+)\.(\d+)", vllm_version)
    if not m:
        raise ValueError(f"cannot read the vLLM version {vllm_version!r}")
    return MoeplaceEplbPolicy if (int(m.group(1)), int(m.group(2))) >= PHY2LOG_ONLY_SINCE else MoeplaceEplbPolicyTriple


def register(policy: type[MoeplaceEplbPolicy] | None = None, *, warm: bool = True,
             **settings: Any) -> type[MoeplaceEplbPolicy]:
    """Install a moeplace policy as vLLM's EPLB policy in this process (vLLM's config accepts the name "default"
    only, so it takes that entry of ``EPLB_POLICIES``). ``policy``: the class (default: the one matching the installed
    vLLM); ``settings``: solver, time_limit_s, tolerance, seed (set on a subclass); ``warm``: compile the solver's
    kernels now (``warm_up``), not in vLLM's first rebalance. Returns the class installed."""
    # lazy: vLLM is present only when vLLM loads this plug-in
    from vllm.distributed.eplb import policy as vllm_policy

    base = policy or policy_for(importlib.metadata.version("vllm"))
    unknown = set(settings) - {"solver", "time_limit_s", "tolerance", "seed"}
    if unknown:
        raise TypeError(f"unknown setting(s) {sorted(unknown)}; choose from solver, time_limit_s, tolerance, seed")
    cls = type(base.__name__, (base,), dict(settings)) if settings else base
    abstract = getattr(vllm_policy, "AbstractEplbPolicy", None)
    if abstract is not None:
        abstract.register(cls)  # issubclass checks pass; vLLM only calls cls.rebalance_experts
    vllm_policy.EPLB_POLICIES["default"] = cls
    log.info("moeplace EPLB policy %s installed as vLLM's 'default' policy", cls.__name__)
    if warm:
        seconds = warm_up(cls.solver, cls.time_limit_s)
        log.info("moeplace EPLB: %s's kernels compiled or loaded in %.1f s", cls.solver, seconds)
    return cls


def settings_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """solver, time_limit_s, tolerance from MOEPLACE_VLLM_EPLB_SOLVER / _TIME_LIMIT / _TOLERANCE."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    if env.get(ENV_SOLVER):
        out["solver"] = env[ENV_SOLVER]
    for key, name in ((ENV_TIME_LIMIT, "time_limit_s"), (ENV_TOLERANCE, "tolerance")):
        if env.get(key):
            try:
                out[name] = float(env[key])
            except ValueError:
                raise ValueError(f"{key}={env[key]!r} is not a number") from None
    return out


def vllm_plugin() -> None:
    """The ``vllm.general_plugins`` entry point: installs the policy when MOEPLACE_VLLM_EPLB is 1 (vLLM loads
    general plug-ins in every process, possibly several times; installing twice is harmless)."""
    if os.environ.get(ENV_ENABLE, "").strip().lower() not in ("1", "true", "yes"):
        return
    warm = os.environ.get(ENV_WARM_UP, "1").strip().lower() not in ("0", "false", "no")
    register(warm=warm, **settings_from_env())
