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

from placer.export.names import FORMAT_NAMES, NUMBERINGS, FormatName, Numbering  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from placer.export.layers import StackMaps

_MODULES: dict[str, str] = {
    "sglang": "placer.export.sglang",
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
    """

    name: str
    suffixes: tuple[str, ...]
    stack_numbering: str
    keyed: bool
    write: Callable[["StackMaps", Path], None]
    read: Callable[[Path], "StackMaps"]
    loads_with: Callable[[Path, "StackMaps"], str]
    description: str = ""


_REGISTRY: dict[str, ExportFormat] = {}


def register(fmt: ExportFormat) -> ExportFormat:
    if fmt.name not in FORMAT_NAMES:
        raise AssertionError(f"format {fmt.name!r} is not in FormatName {FORMAT_NAMES}")
    if fmt.name in _REGISTRY and _REGISTRY[fmt.name] is not fmt:
        raise AssertionError(f"format {fmt.name!r} registered twice")
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
