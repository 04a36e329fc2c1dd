"""SGLang's ``--init-expert-location`` file: exactly one key, ``physical_to_logical_map`` [layers, physical slots].

Checked against sgl-project/sglang ``python/sglang/srt/eplb/expert_location.py``
(``compute_initial_expert_location_metadata``): a ``.pt`` file is read with ``torch.load(weights_only=True)``, a
``.json`` file with ``json.loads``; if the dict has ``physical_to_logical_map`` SGLang calls
``ExpertLocationMetadata.init_by_mapping(server_args, model_config, **data_dict)``, so any other key is an unexpected
keyword argument and stops the server. The number of layers is the model's ``num_hidden_layers``
(``get_model_config_for_expert_location`` in the model files, e.g. ``models/deepseek_v2.py``): every decoder layer,
dense ones included, so the default numbering is "model". The number of slots must be experts +
``--ep-num-redundant-experts`` and divide by the EP size (``_init_common``).
"""

from __future__ import annotations

from pathlib import Path

from placer.core.errors import InputError
from placer.export.encoding import check_keys, check_nonnegative, int_array, read_json, read_torch, write_json, write_torch
from placer.export.layers import StackMaps
from placer.export.registry import ExportFormat, register

KEY = "physical_to_logical_map"


def write(maps: StackMaps, path: Path) -> None:
    if path.suffix.lower() == ".pt":
        write_torch(path, {KEY: maps.phy2log_XP})
    else:
        write_json(path, {KEY: maps.phy2log_XP.tolist()})


def read(path: Path) -> StackMaps:
    d = read_torch(path, "SGLang expert location") if path.suffix.lower() == ".pt" else read_json(path, "SGLang expert location")
    if not isinstance(d, dict):
        raise InputError(f"{path}: holds a {type(d).__name__}, expected an object with '{KEY}'")
    if "logical_count" in d and KEY not in d:
        raise InputError(f"{path}: holds 'logical_count' (expert loads SGLang balances itself), not a placement")
    check_keys(d, path, "SGLang --init-expert-location", [KEY],
               "; SGLang passes every key to init_by_mapping, so an extra key stops the server")
    rows = int_array(d[KEY], path, KEY, 2, "[layers, physical slots]")
    check_nonnegative(rows, path, KEY)
    return StackMaps(rows, tuple(range(rows.shape[0])))


def loads_with(path: Path, maps: StackMaps) -> str:
    G, E = maps.num_gpus, maps.num_experts
    R = maps.num_slots - (E or 0)
    return (f"python -m sglang.launch_server --model-path MODEL --tp-size {G} --ep-size {G} "
            f"--ep-num-redundant-experts {R} --init-expert-location {path}")


FORMAT = register(ExportFormat(
    name="sglang", suffixes=(".json", ".pt"), stack_numbering="model", keyed=False,
    write=write, read=read, loads_with=loads_with,
    description="SGLang --init-expert-location (physical_to_logical_map, every decoder layer)",
))
