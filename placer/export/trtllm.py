"""TensorRT-LLM's MoE load balancer YAML: ``num_slots``, ``initial_global_assignments`` ({layer: [expert per
slot]}) and ``layer_updates_per_iter: 0`` (a static placement).

Checked against NVIDIA/TensorRT-LLM ``tensorrt_llm/llmapi/llm_args.py`` (``MoeLoadBalancerConfig``, a strict
pydantic model with exactly ``num_slots``, ``initial_global_assignments: Dict[int, List[int]]`` and
``layer_updates_per_iter``, so no other key is written) and ``examples/wide_ep/ep_load_balancer/README.md`` (keys
are decoder-layer indices, 3..60 for DeepSeek-R1, so the default numbering is "model"; slot j of layer i holds
expert ``initial_global_assignments[i][j]``, every ``num_slots / ep_size`` successive slots on one rank;
``layer_updates_per_iter: 0`` keeps it static). The file is named by ``moe_config.load_balancer`` in the
``--extra_llm_api_options`` YAML.

MTP layers: TensorRT-LLM builds them with decoder index ``num_hidden_layers + i`` (``MTPForCausalLM`` in
``tensorrt_llm/_torch/models/modeling_speculative.py``: ``layer_idx + start_layer_idx``), and every MoE layer asks
``MoeLoadBalancerConfig.get_layer_initial_global_assignments(layer_idx)``, which raises ``KeyError`` for an index the
file lacks. ``add_mtp_layers`` writes those keys with TensorRT-LLM's own default layout (rank r's slots hold experts
``(r * E // ep_size + i) % E``, what its MoE modules use for a layer without assignments).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from placer.core.errors import InputError, first_line
from placer.export.layers import StackMaps
from placer.export.registry import ExportFormat, register
from placer.core.fileio import require_file, write_text_atomic

KEYS = ("num_slots", "initial_global_assignments", "layer_updates_per_iter")


def write(maps: StackMaps, path: Path) -> None:
    # One layer per line, as TensorRT-LLM's generate_eplb_config.py writes it (flow-style lists).
    lines = [f"num_slots: {maps.num_slots}", "initial_global_assignments:"]
    for lid, row in zip(maps.layer_ids_X, maps.phy2log_XP):
        lines.append(f"  {int(lid)}: [{', '.join(str(int(e)) for e in row)}]")
    lines.append("layer_updates_per_iter: 0")
    write_text_atomic(path, "\n".join(lines) + "\n")


def read(path: Path) -> StackMaps:
    require_file(path, "TensorRT-LLM load balancer YAML")
    try:
        d = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = first_line(exc, None)
        raise InputError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: holds a {type(d).__name__}, expected a mapping with {', '.join(KEYS)}")
    extra = [k for k in d if k not in KEYS]
    if extra:
        raise InputError(f"{path}: field '{extra[0]}' is not part of TensorRT-LLM's MoeLoadBalancerConfig "
                         f"({', '.join(KEYS)}); it would be rejected")
    if not d.get("initial_global_assignments"):
        raise InputError(f"{path}: field 'initial_global_assignments' missing or empty; without it the file "
                         f"holds no placement (an online-balancer config)")
    assign = d["initial_global_assignments"]
    if not isinstance(assign, dict):
        raise InputError(f"{path}: field 'initial_global_assignments' must map layer index to a list of experts")
    ids, rows = [], []
    for k, row in assign.items():
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InputError(f"{path}: field 'initial_global_assignments' has key {k!r}; expected layer indices")
        if not isinstance(row, list) or not row or not all(isinstance(e, int) and not isinstance(e, bool) for e in row):
            raise InputError(f"{path}: field 'initial_global_assignments[{k}]' must be a non-empty list of expert ids")
        neg = [e for e in row if e < 0]
        if neg:
            raise InputError(f"{path}: field 'initial_global_assignments[{k}]' holds expert {neg[0]}; ids are >= 0")
        ids.append(k)
        rows.append(row)
    order = np.argsort(ids, kind="stable")
    ids, rows = [ids[i] for i in order], [rows[i] for i in order]
    num_slots = d.get("num_slots")
    widths = {len(r) for r in rows}
    if num_slots is not None:
        if not isinstance(num_slots, int) or isinstance(num_slots, bool):
            raise InputError(f"{path}: field 'num_slots' is {num_slots!r}; expected an integer")
        bad = next((i for i, r in zip(ids, rows) if len(r) != num_slots), None)
        if bad is not None:
            raise InputError(f"{path}: field 'initial_global_assignments[{bad}]' has {len(rows[ids.index(bad)])} "
                             f"slots but num_slots is {num_slots}")
    elif len(widths) != 1:
        raise InputError(f"{path}: layers of 'initial_global_assignments' have different slot counts {sorted(widths)}")
    lu = d.get("layer_updates_per_iter", 0)
    if not isinstance(lu, int) or isinstance(lu, bool) or lu < 0:
        raise InputError(f"{path}: field 'layer_updates_per_iter' is {lu!r}; expected an integer >= 0")
    return StackMaps(np.asarray(rows, dtype=np.int64), tuple(ids))


def add_mtp_layers(maps: StackMaps, num_hidden_layers: int, n: int) -> tuple[StackMaps, str]:
    """``maps`` with keys ``num_hidden_layers .. + n - 1`` for the MTP layers (those the placement already holds are
    kept), in TensorRT-LLM's default layout."""
    if n < 0:
        raise InputError(f"--mtp-layers must be >= 0, got {n}")
    G, E, P = int(maps.num_gpus), int(maps.num_experts), maps.num_slots
    per_rank = P // G
    default = np.array([(r * E // G + i) % E for r in range(G) for i in range(per_rank)], dtype=np.int64)
    new = [num_hidden_layers + i for i in range(n) if num_hidden_layers + i not in maps.layer_ids_X]
    rows = np.concatenate([maps.phy2log_XP, np.tile(default, (len(new), 1))])
    ids = tuple(maps.layer_ids_X) + tuple(new)
    order = np.argsort(ids, kind="stable")
    out = StackMaps(rows[order], tuple(ids[i] for i in order), maps.num_gpus, maps.num_experts, maps.placement)
    return out, (f"{len(new)} MTP layer key(s) {', '.join(map(str, new)) or '-'} hold TensorRT-LLM's default layout "
                 f"(no statistics for them)")


def loads_with(path: Path, maps: StackMaps) -> str:
    G = maps.num_gpus
    return (f"trtllm-serve MODEL --tp_size {G} --ep_size {G} --extra_llm_api_options extra.yaml, where extra.yaml has "
            f"`enable_attention_dp: true` and `moe_config: {{backend: WIDEEP, load_balancer: {path}}}`")


FORMAT = register(ExportFormat(
    name="trtllm", suffixes=(".yaml", ".yml"), stack_numbering="model", keyed=True,
    write=write, read=read, loads_with=loads_with, add_mtp_layers=add_mtp_layers,
    description="TensorRT-LLM MoE load balancer YAML (initial_global_assignments keyed by decoder layer)",
))
