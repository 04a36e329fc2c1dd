"""SGLang's own EPLB route: the ``logical_count`` file ``--init-expert-location`` takes, from moeplace's statistics.

``{"logical_count": [[...] x layers]}``: the load of every logical expert of every decoder layer (dense layers all
zero), as ``.json`` or ``.pt`` (a dict with one tensor). SGLang then places the experts itself, with its own EPLB
algorithm, at start; with ``--enable-eplb`` it keeps rebalancing from the load it records.

Checked against sgl-project/sglang 0.5.23 ``python/sglang/srt/eplb/expert_location.py``
(``compute_initial_expert_location_metadata``: a ``.pt`` file through ``torch.load(weights_only=True)``, a ``.json``
file through ``json.loads``; a dict with ``logical_count`` goes to ``ExpertLocationMetadata.init_by_eplb``, which
turns a list into a tensor, adds a leading steps axis to a 2-D count and hands it to
``eplb_algorithms.rebalance_experts``, which sums the steps and runs DeepSeek's algorithm on ``weight.float()``:
counts or real-valued loads both work), ``_init_common`` (layers: ``num_layers`` of
``get_model_config_for_expert_location``, ``config.num_hidden_layers`` in ``models/deepseek_v2.py``,
``qwen3_moe.py``, ``qwen2_moe.py``: every decoder layer, so the default numbering is "model", dense layers zero as
the recorder writes them) and ``eplb/expert_distribution.py`` (``_StatAccumulator.dump``: the same
``logical_count``, [steps, layers, experts], the file ``moeplace stats --load`` reads back).
"""

from __future__ import annotations

from pathlib import Path

from placer.export.encoding import write_json, write_torch
from placer.export.layers import StackLoads
from placer.export.registry import ExportFormat, register

KEY = "logical_count"


def write(loads: StackLoads, path: Path) -> None:
    if path.suffix.lower() == ".pt":
        write_torch(path, {KEY: loads.load_XE})
    else:
        write_json(path, {KEY: loads.load_XE.tolist()})


def loads_with(path: Path, loads: StackLoads) -> str:
    return (f"python -m sglang.launch_server --model-path MODEL --tp-size EP --ep-size EP --ep-num-redundant-experts R "
            f"--init-expert-location {path}  (SGLang's EPLB places the experts from these loads at start; to keep "
            f"rebalancing from live load add --enable-eplb, with --eplb-rebalance-num-iterations N (default 1000), "
            f"--eplb-algorithm, --eplb-rebalance-layers-per-chunk, --eplb-min-rebalancing-utilization-threshold)")


FORMAT = register(ExportFormat(
    name="sglang-eplb", suffixes=(".json", ".pt"), stack_numbering="model", keyed=False,
    write=write, read=None, loads_with=loads_with, takes="loads",
    description="SGLang --init-expert-location expert loads (logical_count, every decoder layer) for SGLang's EPLB",
))
