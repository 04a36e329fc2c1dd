"""Upper bounds of the counts a user gives, each set by what stores or uses the value.

A number beyond one is a typo or hostile input: refused in one line that names the bound, before it can overflow a
NumPy integer or size an array that takes minutes (``--num-model-layers 99999999999999999999``,
``--mtp-layers 1000000000``).
"""

from __future__ import annotations

import numbers

# Decoder layers of a model, and so MoE layers and layer indices (DeepSeek-V3 has 61; the largest models a few
# hundred): a file with one row per decoder layer is never longer.
MAX_LAYERS = 100_000
# Experts per layer: ids are stored as uint32 at most (placer/core/trace/schema.py, expert_dtype).
MAX_EXPERTS = 1 << 32
# Domains of a synthetic trace: the domain column is int16 (labels 0..32767).
MAX_DOMAINS = 1 << 15
# Tokens of one sequence: positions are int32.
MAX_SEQ_LEN = 1 << 31
# Seeds: CP-SAT's random_seed is a 32-bit integer.
MAX_SEED = (1 << 31) - 1
# Worker threads or processes of one solve or replay.
MAX_THREADS = 1024
# A token's hidden size and an expert's FFN size (replay's random experts): the largest models use tens of thousands.
MAX_HIDDEN = 1 << 20
# Tokens of one timed expert call (calibrate): no serving batch comes near.
MAX_CALL_TOKENS = 1 << 24
# Steps of one replay: at tenths of a second each, more would run for days.
MAX_STEPS = 1_000_000


def require_at_most(name: str, value: object, bound: int, why: str) -> None:
    """Raise ``ValueError`` when the integer ``value`` exceeds ``bound``; ``why`` says where the bound comes from."""
    if isinstance(value, numbers.Integral) and value > bound:
        raise ValueError(f"{name} ({value}) must be at most {bound:,} ({why})")
