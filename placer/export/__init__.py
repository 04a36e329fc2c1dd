"""Export placements to the files serving stacks load, and import them back.

One module per format (``sglang``, ``vllm``, ``vllm_ascend``, ``eplb``, ``trtllm``, ``moeplace``), registered under
the ``FormatName`` literal in ``registry.py``; ``layers.py`` maps between MoE-layer and decoder-layer numbering;
``api.py`` holds ``export_placement`` and ``import_placement``. docs/export.md lists what each format was checked
against in the stacks' own code.
"""

from placer.export.api import ExportResult, export_placement, import_placement, read_stack
from placer.export.registry import FORMAT_NAMES, FormatName, get_format

__all__ = ["ExportResult", "FORMAT_NAMES", "FormatName", "export_placement", "get_format", "import_placement",
           "read_stack"]
