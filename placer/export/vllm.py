"""vLLM's EPLB maps: ``physical_to_logical_map`` [layers, slots], ``logical_to_physical_map`` [layers, experts, R]
padded with -1, ``logical_replica_count`` [layers, experts], as JSON or ``.pt``.

Checked against vllm-project/vllm ``vllm/distributed/eplb/eplb_state.py`` (``EplbState``: the three tensors, shapes
``(num_moe_layers, ...)``: MoE layers only, so the default numbering is "moe") and ``vllm/config/parallel.py``
(``EPLBConfig``: window_size, step_interval, num_redundant_experts, log_balancedness, use_async, policy,
communicator; ``expert_placement_strategy``: "linear" or "round_robin"). vLLM has **no option that loads a
placement from a file**: ``EplbState.build`` starts from the linear layout and rebalances from measured load. This
file is for code that sets the state itself (for example a worker extension); to serve a placement with stock vLLM,
renumber the checkpoint with ``moeplace apply`` (linear layout) or use vLLM-Ascend's ``expert_map_path``.
"""

from __future__ import annotations

from pathlib import Path

from placer.export.layers import StackMaps
from placer.export.registry import ExportFormat, register
from placer.export.triple import triple_io

NAMES = ("physical_to_logical_map", "logical_to_physical_map", "logical_replica_count")


write, read = triple_io(NAMES, "vLLM EPLB")


def loads_with(path: Path, maps: StackMaps) -> str:
    return ("no vLLM option loads a placement file (EplbState builds its own maps); serve the linear layout of a "
            "checkpoint renumbered by `moeplace apply`, or set the EPLB state from this file in your own worker code")


FORMAT = register(ExportFormat(
    name="vllm", suffixes=(".json", ".pt"), stack_numbering="moe", keyed=False,
    write=write, read=read, loads_with=loads_with,
    description="vLLM EPLB state (physical_to_logical_map, logical_to_physical_map, logical_replica_count)",
))
