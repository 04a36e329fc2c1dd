"""The export-format registry, keyed by the ``FormatName`` literal (as ``solvers/registry.py`` is).

Add a format: write ``placer/export/<module>.py`` defining ``FORMAT = register(ExportFormat(...))`` with a ``write``
and a ``read`` function, and add its name to ``FormatName`` (``names.py``) and ``_MODULES``. At import the registry checks that the
literal, the modules and the registered formats agree, so the command line's choices and the code cannot drift.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from placer.export.names import FORMAT_NAMES, LOAD_FORMATS, NUMBERINGS, FormatName, Numbering  # noqa: F401

if TYPE_CHECKING:
    from placer.export.layers import StackLoads, StackMaps

_MODULES: dict[str, str] = {
    "sglang": "placer.export.sglang",
    "sglang-eplb": "placer.export.sglang_eplb",
    "vllm": "placer.export.vllm",
    "vllm-ascend": "placer.export.vllm_ascend",
    "eplb": "placer.export.eplb",
    "trtllm": "placer.export.trtllm",
    "moeplace": "placer.export.moeplace",
}


@dataclass(frozen=True)
class ExportFormat:
    """One serving stack's placement file.

    suffixes: file name endings the format is written as (the first is the default); the ending picks the encoding.
    stack_numbering: how the stack counts layers ("model": every decoder layer, as SGLang and TensorRT-LLM do;
        "moe": MoE layers only, as vLLM does); the default of ``--layer-numbering``.
    keyed: True if the file names each layer (a dict keyed by layer index), so dense layers are simply left out
        under model numbering; False if it holds one row per layer, so dense layers get the trivial placement.
    write(maps, path): write the file (atomically); read(path) -> StackMaps: read and validate it.
    loads_with(path, maps) -> str: the serving-stack command line or setting that loads the file.
    takes: "placement" (``write`` gets ``StackMaps``), or "loads" for a file of expert loads that the stack
        balances itself (``write`` and ``loads_with`` get ``StackLoads``; ``read`` is None: such files are read as
        statistics, ``moeplace stats --load``). Listed in ``LOAD_FORMATS``.
    add_mtp_layers(maps, num_hidden_layers, n) -> (maps, note): for stacks that look up MTP layers (decoder index
        num_hidden_layers, ...) in the file and fail without them; adds their rows (None: the stack needs none).
    """

    name: str
    suffixes: tuple[str, ...]
    stack_numbering: str
    keyed: bool
    write: Callable[["StackMaps | StackLoads", Path], None]
    read: Callable[[Path], "StackMaps"] | None
    loads_with: Callable[[Path, "StackMaps | StackLoads"], str]
    description: str = ""
    takes: str = "placement"
    add_mtp_layers: Callable[["StackMaps", int, int], "tuple[StackMaps, str]"] | None = None


_REGISTRY: dict[str, ExportFormat] = {}


def register(fmt: ExportFormat) -> ExportFormat:
    if fmt.name not in FORMAT_NAMES:
        raise AssertionError(f"format {fmt.name!r} is not in FormatName {FORMAT_NAMES}")
    if fmt.name in _REGISTRY and _REGISTRY[fmt.name] is not fmt:
        raise AssertionError(f"format {fmt.name!r} registered twice")
    if (fmt.takes == "loads") != (fmt.name in LOAD_FORMATS) or fmt.takes not in ("placement", "loads"):
        raise AssertionError(f"format {fmt.name!r}: takes {fmt.takes!r} disagrees with LOAD_FORMATS {LOAD_FORMATS}")
    if fmt.stack_numbering not in NUMBERINGS:
        raise AssertionError(f"format {fmt.name!r}: stack_numbering {fmt.stack_numbering!r} not in {NUMBERINGS}")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_format(name: str) -> ExportFormat:
    """The format registered under ``name`` (ValueError listing the choices otherwise)."""
    if name not in FORMAT_NAMES:
        raise ValueError(f"unknown format {name!r}; choose from {', '.join(FORMAT_NAMES)}")
    return _REGISTRY[name]


def _load_all() -> None:
    assert set(_MODULES) == set(FORMAT_NAMES), f"_MODULES {sorted(_MODULES)} != FormatName {sorted(FORMAT_NAMES)}"
    for module in sorted(set(_MODULES.values())):
        importlib.import_module(module)
    missing = set(FORMAT_NAMES) - set(_REGISTRY)
    assert not missing, f"formats named but not registered: {sorted(missing)}"


_load_all()
