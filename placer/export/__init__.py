"""Export placements to the files serving stacks load, and import them back.

One module per format (``sglang``, ``sglang_eplb``, ``vllm``, ``vllm_ascend``, ``eplb``, ``trtllm``, ``moeplace``),
registered under the ``FormatName`` literal (``names.py``) in ``registry.py``; ``layers.py`` maps between MoE-layer
and decoder-layer numbering; ``api.py`` holds ``export_placement``, ``export_loads`` (``sglang-eplb``: expert loads
that SGLang balances itself) and ``import_placement``. docs/export.md lists what each format was checked against in
the stacks' own code.

The package imports its modules on first use, so that the command line's ``--help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from placer.export.names import FORMAT_NAMES, LOAD_FORMATS, PLACEMENT_FORMATS, FormatName

_LAZY = {"ExportResult": "api", "export_loads": "api", "export_placement": "api", "import_placement": "api",
         "read_stack": "api", "get_format": "registry"}

__all__ = ["ExportResult", "FORMAT_NAMES", "FormatName", "LOAD_FORMATS", "PLACEMENT_FORMATS", "export_loads", "export_placement", "get_format",
           "import_placement", "read_stack"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"placer.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'placer.export' has no attribute {name!r}")
