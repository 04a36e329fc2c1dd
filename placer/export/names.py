"""The names of the export formats and layer numberings (no heavy imports: the command line's help reads them)."""

from __future__ import annotations

from typing import Literal, get_args

FormatName = Literal["sglang", "sglang-eplb", "vllm", "vllm-ascend", "eplb", "trtllm", "moeplace"]
FORMAT_NAMES: tuple[str, ...] = get_args(FormatName)

Numbering = Literal["moe", "model"]
NUMBERINGS: tuple[str, ...] = get_args(Numbering)

# Formats that write expert loads (statistics the stack balances itself), not a placement.
LOAD_FORMATS: tuple[str, ...] = ("sglang-eplb",)
PLACEMENT_FORMATS: tuple[str, ...] = tuple(f for f in FORMAT_NAMES if f not in LOAD_FORMATS)
