"""vLLM-Ascend's expert map JSON (``expert_map_path``): ``moe_layer_count``, ``layer_list`` of ``layer_id``,
``device_count``, ``device_list`` of ``device_id`` and ``device_expert`` (the logical expert in each of the device's
slots, in slot order).

Checked against vllm-project/vllm-ascend 0.23.0, 0.23.0.post1, 0.26.0rc1 and 0.30.0rc2 ``eplb/core/eplb_utils.py``
(``expert_file_to_tensor(path, layer_id)`` takes ``layer_list[layer_id]``, its ``device_list`` in list order, each
``device_expert`` a row of one [devices, slots] tensor; ``layer_id`` is the MoE layer's position among the model's
MoE layers (``AscendMoERunner.moe_counter`` in ``ops/fused_moe/fused_moe.py``), so the default numbering is "moe";
``layer_id == moe_layer_count`` is an MTP layer, given the generated default placement; ``init_eplb_config`` builds
each device's ``expert_map[device_expert] = arange(slots)``: one slot per expert and device, the last copy winning,
and ``generate_log2phy_map`` numbers physical slots ``slot + rank * (distinct experts of rank 0)``, so two copies of
one expert on one device send tokens to the wrong slots: ``write`` refuses such a placement and ``read`` such a
file), ``vllm_ascend/eplb/adaptor/vllm_adaptor.py`` (``_export_tensor_to_file`` writes the same structure with
``layer_id`` = MoE index) and ``vllm_ascend/ascend_config.py`` (``EplbConfig``: ``expert_map_path``,
``num_redundant_experts`` under ``additional_config["eplb_config"]``). Releases up to 0.12 (0.9.1, 0.11.0,
0.12.0rc1 checked: ``vllm_ascend/ops/expert_load_balancer.py``, which has the same one-slot-per-expert map) read a
top-level ``expert_map_path`` with ``init_redundancy_expert``; 0.13.0 reads both (``eplb_config`` wins); 0.18.0 to
0.26.0rc1 read only ``eplb_config`` and ignore a top-level ``expert_map_path`` without an error; 0.30.0rc2 refuses it
(unknown keys of ``additional_config`` stop the server).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from placer.core.errors import InputError
from placer.core.placement import same_gpu_copies
from placer.export.encoding import read_json, write_json
from placer.export.layers import StackMaps
from placer.export.registry import ExportFormat, register


def check_one_copy_per_device(rows_XP: np.ndarray, layer_ids: tuple[int, ...], G: int, where: str,
                              model_layers: tuple[int, ...] | None = None) -> None:
    """One line naming the layer, device and expert if a device holds two copies of one expert (vLLM-Ascend keeps
    one slot per expert and device, and would route that device's tokens to the wrong slots)."""
    X, P = rows_XP.shape
    S = P // G
    twice = same_gpu_copies(rows_XP, G)
    if not twice.any():
        return
    x, g = (int(v[0]) for v in np.nonzero(twice))
    on_device = rows_XP[x, g * S:(g + 1) * S]
    values, counts = np.unique(on_device, return_counts=True)
    e = int(values[counts > 1][0])
    slots = [g * S + j for j in range(S) if on_device[j] == e]
    model = f" (model layer {model_layers[x]})" \
        if model_layers and len(model_layers) == X and model_layers[x] != layer_ids[x] else ""
    raise InputError(f"{where}: layer {layer_ids[x]}{model}, device {g} holds expert {e} twice (slots "
                     f"{', '.join(map(str, slots))}); vLLM-Ascend keeps one slot per expert on a device and would "
                     f"route tokens to the wrong slots: solve again without two copies of one expert on one GPU")


def write(maps: StackMaps, path: Path) -> None:
    G = int(maps.num_gpus)
    S = maps.num_slots // G
    model_layers = maps.placement.model_layer_indices if maps.placement is not None else None
    check_one_copy_per_device(maps.phy2log_XP, maps.layer_ids_X, G, f"{path}", model_layers)
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
    rows_arr = np.asarray(rows, dtype=np.int64)
    check_one_copy_per_device(rows_arr, tuple(ids), G, f"{path}")
    return StackMaps(rows_arr, tuple(ids), num_gpus=G)


def loads_with(path: Path, maps: StackMaps) -> str:
    R = maps.num_slots - int(maps.num_experts or maps.phy2log_XP.max() + 1)
    config = json.dumps({"eplb_config": {"expert_map_path": str(path), "num_redundant_experts": R}})
    return (f"vllm serve MODEL --enable-expert-parallel --tensor-parallel-size {maps.num_gpus} "
            f"--additional-config '{config}'  (vLLM-Ascend 0.13 and later; up to 0.12: "
            f"'{{\"expert_map_path\": \"{path}\", \"init_redundancy_expert\": {R}}}')")


FORMAT = register(ExportFormat(
    name="vllm-ascend", suffixes=(".json",), stack_numbering="moe", keyed=True,
    write=write, read=read, loads_with=loads_with,
    description="vLLM-Ascend expert_map_path JSON (layer_list / device_list / device_expert)",
))
