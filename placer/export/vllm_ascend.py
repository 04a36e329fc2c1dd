"""vLLM-Ascend's expert map JSON (``expert_map_path``): ``moe_layer_count``, ``layer_list`` of ``layer_id``,
``device_count``, ``device_list`` of ``device_id`` and ``device_expert`` (the logical expert in each of the device's
slots, in slot order).

Checked against vllm-project/vllm-ascend ``vllm_ascend/eplb/adaptor/vllm_adaptor.py`` (``_expert_file_to_tensor``
reads ``moe_layer_count``, ``layer_list[0]["device_count"]`` and every ``device_list[i]["device_expert"]`` into one
[layers, devices, slots] tensor, in list order; ``get_init_expert_map_from_file`` maps list entry i to MoE layer i,
adding the model's dense-layer count itself, so the default numbering is "moe"; ``_export_tensor_to_file`` writes
the same structure with ``layer_id`` = MoE layer index) and ``vllm_ascend/ops/expert_load_balancer.py``. It is
loaded with ``--additional-config '{"expert_map_path": FILE}'`` (older releases) or
``'{"eplb_config": {"expert_map_path": FILE}}'`` (newer ``EplbConfig``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from placer.core.errors import InputError
from placer.export.encoding import read_json, write_json
from placer.export.layers import StackMaps
from placer.export.registry import ExportFormat, register


def write(maps: StackMaps, path: Path) -> None:
    G = int(maps.num_gpus)
    S = maps.num_slots // G
    layers = []
    for lid, row in zip(maps.layer_ids_X, maps.phy2log_XP):
        devices = [{"device_id": g, "device_expert": row[g * S:(g + 1) * S].tolist()} for g in range(G)]
        layers.append({"layer_id": int(lid), "device_count": G, "device_list": devices})
    write_json(path, {"moe_layer_count": len(layers), "layer_list": layers}, rows=False)


def _int(v: Any, path: Path, field: str, minimum: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise InputError(f"{path}: field '{field}' is {v!r}; expected an integer >= {minimum}")
    return v


def read(path: Path) -> StackMaps:
    d = read_json(path, "vLLM-Ascend expert map")
    if not isinstance(d, dict) or "layer_list" not in d or "moe_layer_count" not in d:
        found = ", ".join(d) if isinstance(d, dict) else type(d).__name__
        raise InputError(f"{path}: a vLLM-Ascend expert map holds moe_layer_count and layer_list (found: {found})")
    layers = d["layer_list"]
    if not isinstance(layers, list) or not layers:
        raise InputError(f"{path}: field 'layer_list' must be a non-empty list")
    count = _int(d["moe_layer_count"], path, "moe_layer_count", 1)
    if count != len(layers):
        raise InputError(f"{path}: field 'moe_layer_count' is {count} but layer_list has {len(layers)} layers")
    rows, ids, G, S = [], [], None, None
    for i, layer in enumerate(layers):
        where = f"layer_list[{i}]"
        if not isinstance(layer, dict) or not {"layer_id", "device_count", "device_list"} <= set(layer):
            raise InputError(f"{path}: field '{where}' needs layer_id, device_count and device_list")
        ids.append(_int(layer["layer_id"], path, f"{where}.layer_id"))
        n = _int(layer["device_count"], path, f"{where}.device_count", 1)
        devices = layer["device_list"]
        if not isinstance(devices, list) or len(devices) != n:
            got = len(devices) if isinstance(devices, list) else type(devices).__name__
            raise InputError(f"{path}: field '{where}.device_count' is {n} but device_list has {got} devices")
        row: list[int] = []
        if G is None:
            G = n
        elif n != G:
            raise InputError(f"{path}: field '{where}.device_count' is {n}, layer_list[0] has {G}")
        for j, dev in enumerate(devices):
            f = f"{where}.device_list[{j}]"
            if not isinstance(dev, dict) or "device_id" not in dev or "device_expert" not in dev:
                raise InputError(f"{path}: field '{f}' needs device_id and device_expert")
            gid = _int(dev["device_id"], path, f"{f}.device_id")
            if gid != j:
                raise InputError(f"{path}: field '{f}.device_id' is {gid}; vLLM-Ascend reads devices in list order, "
                                 f"so device_list[{j}] must be device {j}")
            experts = dev["device_expert"]
            if not isinstance(experts, list) or not experts:
                raise InputError(f"{path}: field '{f}.device_expert' must be a non-empty list of expert ids")
            for k, e in enumerate(experts):
                _int(e, path, f"{f}.device_expert[{k}]")
            if S is None:
                S = len(experts)
            elif len(experts) != S:
                raise InputError(f"{path}: field '{f}.device_expert' has {len(experts)} slots, "
                                 f"layer_list[0].device_list[0] has {S}; every device needs the same number")
            row.extend(experts)
        rows.append(row)
    for i in range(1, len(ids)):
        if ids[i] <= ids[i - 1]:
            raise InputError(f"{path}: field 'layer_list[{i}].layer_id' is {ids[i]} after {ids[i - 1]}; vLLM-Ascend "
                             f"reads layers in list order, so layer ids must increase")
    return StackMaps(np.asarray(rows, dtype=np.int64), tuple(ids), num_gpus=G)


def loads_with(path: Path, maps: StackMaps) -> str:
    return (f"vllm serve MODEL --enable-expert-parallel --tensor-parallel-size {maps.num_gpus} "
            f"--additional-config '{{\"expert_map_path\": \"{path}\"}}'  (vLLM-Ascend; newer releases: "
            f"'{{\"eplb_config\": {{\"expert_map_path\": \"{path}\"}}}}')")


FORMAT = register(ExportFormat(
    name="vllm-ascend", suffixes=(".json",), stack_numbering="moe", keyed=True,
    write=write, read=read, loads_with=loads_with,
    description="vLLM-Ascend expert_map_path JSON (layer_list / device_list / device_expert)",
))
