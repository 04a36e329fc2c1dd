"""Text for the tracer: plain text or JSONL prompts, and the model folder's tokenizer (or byte vocabulary).

A plain text file is one long document, cut into sequences of ``seq_len`` tokens; a JSONL file holds one
prompt per line (field ``--text-field``, default ``text``), each one sequence truncated to ``seq_len``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from placer.core.errors import InputError, first_line
from placer.core.fileio import require_file
from placer.tiny.vocab import BYTE_TOKENIZER_FILE, ByteCodec


def is_jsonl(path: Path, text_field: str | None) -> bool:
    return text_field is not None or path.suffix.lower() in (".jsonl", ".ndjson")


def read_prompts(path: str | os.PathLike, text_field: str | None = None) -> tuple[list[str], bool]:
    """The texts of a file and whether each is a separate prompt (JSONL) or parts of one document (plain).

    Raises InputError (naming file, line and field) for a missing, empty or malformed file.
    """
    p, raw = _read_text(path)
    if not is_jsonl(p, text_field):
        return [raw], False
    return [r.text for r in _jsonl_prompts(p, raw, text_field or "text", None)], True


# The domain of a prompt whose line lacks the --domain-field field (or holds null).
DEFAULT_DOMAIN = "unknown"


@dataclass(frozen=True)
class PromptRecord:
    """One JSONL prompt: its text, its domain label (``--domain-field``; None without one), its line, and whether
    the line named its domain (a line without the field gets ``DEFAULT_DOMAIN``)."""

    text: str
    domain: str | None
    line: int
    domain_given: bool = True


def read_prompt_records(path: str | os.PathLike, text_field: str | None = None,
                        domain_field: str | None = None) -> list[PromptRecord]:
    """The non-empty prompts of a JSONL file with their domain labels, for tracing a server (one request each)."""
    p, raw = _read_text(path)
    return _jsonl_prompts(p, raw, text_field or "text", domain_field)


def _read_text(path: str | os.PathLike) -> tuple[Path, str]:
    p = require_file(path, "text file")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    if not raw.strip():
        raise InputError(f"{p}: empty text file")
    return p, raw


def _jsonl_prompts(p: Path, raw: str, field: str, domain_field: str | None) -> list[PromptRecord]:
    prompts = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or field not in rec:
            keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise InputError(f"{p}: line {n}: no field '{field}' (has {keys}); choose it with --text-field")
        value = rec[field]
        if not isinstance(value, str):
            raise InputError(f"{p}: line {n}: field '{field}' is {type(value).__name__}, expected a string")
        domain, given = None, True
        if domain_field is not None:
            given = rec.get(domain_field) is not None
            domain = str(rec[domain_field]) if given else DEFAULT_DOMAIN
        if value:
            prompts.append(PromptRecord(value, domain, n, given))
    if not prompts:
        raise InputError(f"{p}: no non-empty '{field}' prompts in the JSONL file")
    return prompts


@dataclass
class Tokenizer:
    """What the tracer needs of a tokenizer: text to ids, the padding id and the end-of-sequence ids."""

    encode: Callable[[str], list[int]]
    pad_id: int
    eos_ids: frozenset[int]
    kind: str


def load_tokenizer(model_dir: str | os.PathLike, config=None) -> Tokenizer:
    """The folder's byte vocabulary (``byte_tokenizer.json``) or its Hugging Face tokenizer, offline."""
    d = Path(model_dir)
    if (d / BYTE_TOKENIZER_FILE).is_file():
        try:
            codec = ByteCodec.load(d)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise InputError(f"{d / BYTE_TOKENIZER_FILE}: malformed byte vocabulary ({exc})") from None
        return Tokenizer(codec.encode, codec.pad_token_id, frozenset({codec.eos_token_id}), "bytes")
    try:
        from transformers import AutoTokenizer  # lazy: transformers takes seconds to import

        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a missing/broken tokenizer
        first = first_line(exc, None)
        raise InputError(f"{d}: no usable tokenizer in the model folder ({first[:160]})") from None
    eos = tok.eos_token_id if tok.eos_token_id is not None else getattr(config, "eos_token_id", None)
    eos_ids = frozenset(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
    pad = tok.pad_token_id
    if pad is None:
        pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = min(eos_ids) if eos_ids else 0
    return Tokenizer(lambda s: list(tok(s, add_special_tokens=True)["input_ids"]), int(pad), eos_ids, type(tok).__name__)


def make_sequences(
    texts: list[str], separate: bool, tokenizer: Tokenizer, seq_len: int, budget: int | None
) -> list[list[int]]:
    """Token sequences of at most ``seq_len`` ids, ``budget`` ids in all at most.

    A document (plain text) is cut into consecutive pieces; a prompt (JSONL) is truncated to ``seq_len``.
    """
    out: list[list[int]] = []
    left = budget if budget is not None else float("inf")
    for text in texts:
        ids = tokenizer.encode(text)
        pieces = [ids[:seq_len]] if separate else [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
        for piece in pieces:
            if left <= 0:
                return out
            piece = piece[: int(min(len(piece), left))]
            if piece:
                out.append(piece)
                left -= len(piece)
    return out
