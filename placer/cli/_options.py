"""Options shared by solve and evaluate (not a command module: the name starts with '_')."""

from __future__ import annotations

from placer.cli.common import UsageError


def check_solver(name: str | None) -> str | None:
    """Validate ``--solver`` against the solver registry (imported only when the option is used, so that
    ``moeplace --help`` does not import every solver and OR-Tools)."""
    if name is None:
        return name
    # lazy: loads the solvers (numba, OR-Tools); kept out of `moeplace --help`
    from solvers import SOLVER_NAMES

    if name not in SOLVER_NAMES:
        raise UsageError(f"--solver: unknown solver {name!r}; choose from {', '.join(SOLVER_NAMES)}")
    return name


GPUS_HELP = "EP ranks (GPUs); the hardware is --topology's, else the h100 preset (docs/calibrate.md)."
NODES_HELP = "Nodes the GPUs sit in (GPU g on node g // (G / N)); default 1."
TOPOLOGY_HELP = ("Hardware file (moeplace calibrate) or preset (h100, h200, a100), combined with --gpus/--nodes; or a "
                 "topology JSON with its own num_gpus (placer/core/topology.py). See docs/calibrate.md.")
STATS_HELP = "Statistics file written by `moeplace stats` (repeatable: summed, or each one a scenario)."
LOAD_HELP = ("Load-only input (balance only): a \\[layers, experts] matrix (.npy, .csv, .pt) of counts or real-valued "
             "loads (rates, averages), or an SGLang logical_count file (.pt stat dump, .json), as `moeplace stats --load` "
             "reads them; repeatable: summed, or each one a scenario.")
SCENARIOS_HELP = ("Workloads the placement must all serve: inputs (each input one scenario), domain or phase (split "
                  "traces by that column), window:N (consecutive windows of N tokens in trace order). Without it the "
                  "inputs are summed. docs/robust.md.")
ROBUST_HELP = "With --scenarios: minimise the worst scenario (default) or the mean, each per token."
