"""The bundled model's byte-level vocabulary: ids 0-255 are the bytes of UTF-8 text, then three specials.

No tokenizer is downloaded or trained: a model directory that holds ``byte_tokenizer.json`` (written by
``moeplace train-tiny``) is read with :class:`ByteCodec`, any other with the directory's own Hugging Face
tokenizer.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
VOCAB_SIZE = 259


@dataclass(frozen=True)
class ByteCodec:
    """UTF-8 bytes as token ids (0-255), plus padding, begin- and end-of-sequence ids."""

    pad_token_id: int = PAD_ID
    bos_token_id: int = BOS_ID
    eos_token_id: int = EOS_ID
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self) -> None:
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            if not 256 <= v < self.vocab_size:
                raise ValueError(f"{name} ({v}) must lie in [256, vocab_size={self.vocab_size})")

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text`` as ids (no special tokens added)."""
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """Bytes back to text; special ids are dropped, broken UTF-8 is replaced."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / BYTE_TOKENIZER_FILE
        path.write_text(json.dumps({"kind": "bytes", **asdict(self)}, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ByteCodec":
        d = json.loads((Path(folder) / BYTE_TOKENIZER_FILE).read_text(encoding="utf-8"))
        d.pop("kind", None)
        return cls(**d)
