"""DeepSeek EPLB's output: the three tensors ``rebalance_experts`` returns, ``phy2log`` [layers, slots],
``log2phy`` [layers, experts, R] padded with -1, ``logcnt`` [layers, experts], as ``.pt`` or ``.npz``.

Checked against deepseek-ai/EPLB ``eplb.py`` (``rebalance_experts(weight, num_replicas, num_groups, num_nodes,
num_gpus) -> (phy2log, log2phy, logcnt)``; ``log2phy`` is filled with -1 and has ``maxlogcnt`` columns; slots are
GPU-major, ``num_replicas // num_gpus`` per GPU). EPLB numbers layers as its caller's ``weight`` rows; the default
here is MoE layers. DeepSeek lists an expert's slots in replica order; moeplace writes them in increasing slot order
and reads either.
"""

from __future__ import annotations

from pathlib import Path

from placer.export.layers import StackMaps
from placer.export.registry import ExportFormat, register
from placer.export.triple import triple_io

NAMES = ("phy2log", "log2phy", "logcnt")


write, read = triple_io(NAMES, "DeepSeek EPLB")


def loads_with(path: Path, maps: StackMaps) -> str:
    reader = f"numpy.load('{path}')" if path.suffix.lower() == ".npz" else f"torch.load('{path}', weights_only=True)"
    return f"{reader} gives the (phy2log, log2phy, logcnt) that deepseek-ai/EPLB's rebalance_experts returns"


FORMAT = register(ExportFormat(
    name="eplb", suffixes=(".pt", ".npz"), stack_numbering="moe", keyed=False,
    write=write, read=read, loads_with=loads_with,
    description="DeepSeek EPLB rebalance_experts output (phy2log, log2phy, logcnt)",
))
