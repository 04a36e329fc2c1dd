"""The training corpus of the bundled model: Python standard library sources (code, docstrings, comments).

The corpus is not committed; ``stdlib_manifest.json`` beside this module names every file (path relative to
the standard library folder, size, SHA-256) and the interpreter it was taken from, and training checks the
running interpreter's files against it, so a run on another Python version fails loudly instead of
silently training on different text. About a tenth of the files (chosen by a hash of their path) are held
out: training never sees them and reports its validation loss on them.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from placer.core.errors import InputError
from placer.core.fileio import write_text_atomic
from placer.tiny.vocab import EOS_ID

MANIFEST_PATH = Path(__file__).resolve().parent / "stdlib_manifest.json"

# Folders left out: tests (huge, repetitive), GUI and demo code, vendored or generated text.
EXCLUDED_DIRS = frozenset({
    "test", "tests", "idlelib", "tkinter", "turtledemo", "site-packages", "dist-packages", "ensurepip",
    "lib2to3", "pydoc_data", "encodings", "__pycache__", "__phello__",
})
MAX_FILE_BYTES = 150_000
HELDOUT_EVERY = 10


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_heldout(relpath: str) -> bool:
    """Held-out files: the first byte of SHA-256(path) is a multiple of ``HELDOUT_EVERY`` (about 1 in 10)."""
    return hashlib.sha256(relpath.encode()).digest()[0] % HELDOUT_EVERY == 0


def scan_stdlib(root: Path | None = None) -> list[dict]:
    """The corpus files of the running interpreter's standard library, sorted by path."""
    root = root or stdlib_root()
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if set(rel.parts[:-1]) & EXCLUDED_DIRS or "test" in rel.name or rel.parts[0].startswith("config-"):
            continue
        size = p.stat().st_size
        if size == 0 or size > MAX_FILE_BYTES:
            continue
        files.append({"path": rel.as_posix(), "bytes": size, "sha256": _sha256(p), "heldout": is_heldout(rel.as_posix())})
    return files


def make_manifest(root: Path | None = None) -> dict:
    files = scan_stdlib(root)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "rule": f"*.py under the stdlib folder, not in {sorted(EXCLUDED_DIRS)}, no 'test' in the name, "
        f"1..{MAX_FILE_BYTES} bytes; held out when sha256(path)[0] % {HELDOUT_EVERY} == 0",
        "files": files,
    }


def load_manifest(path: Path = MANIFEST_PATH) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class Corpus:
    """The training and held-out text as flat arrays of token ids, documents separated by EOS."""

    train_ids: np.ndarray
    heldout_ids: np.ndarray
    train_files: int
    heldout_files: int
    python: str


def load_corpus(manifest: dict | None = None, root: Path | None = None, allow_mismatch: bool = False) -> Corpus:
    """Read the manifest's files from the running interpreter's standard library, checking their hashes.

    Raises ``InputError`` naming the first differing file unless ``allow_mismatch`` (then the files present
    are used as they are, and the model will not be the bundled one).
    """
    manifest = manifest or load_manifest()
    root = root or stdlib_root()
    parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
    counts = {False: 0, True: 0}
    sep = np.array([EOS_ID], dtype=np.int16)
    for f in manifest["files"]:
        p = root / f["path"]
        if not p.is_file():
            if allow_mismatch:
                continue
            raise InputError(
                f"{p}: corpus file of the manifest is missing (manifest made with Python {manifest['python']}, "
                f"running {platform.python_version()}); pass --allow-corpus-mismatch to train on what is there"
            )
        data = p.read_bytes()
        if not allow_mismatch and hashlib.sha256(data).hexdigest() != f["sha256"]:
            raise InputError(
                f"{p}: sha256 differs from the manifest's (manifest made with Python {manifest['python']}, "
                f"running {platform.python_version()}); pass --allow-corpus-mismatch to train on it anyway"
            )
        held = bool(f["heldout"])
        parts[held].append(np.frombuffer(data, dtype=np.uint8).astype(np.int16))
        parts[held].append(sep)
        counts[held] += 1
    if not parts[False] or not parts[True]:
        raise InputError(f"{MANIFEST_PATH}: no training or no held-out files found under {root}")
    return Corpus(
        train_ids=np.concatenate(parts[False]),
        heldout_ids=np.concatenate(parts[True]),
        train_files=counts[False],
        heldout_files=counts[True],
        python=manifest["python"],
    )


def write_manifest(path: Path = MANIFEST_PATH, root: Path | None = None) -> Path:
    """Write the manifest of this interpreter's corpus, one file per line (a new corpus: retrain after)."""
    m = make_manifest(root)
    head = [f'  "{k}": {json.dumps(m[k])},' for k in ("python", "implementation", "rule")]
    rows = [f"    {json.dumps(f)}" for f in m["files"]]
    return write_text_atomic(path, "{\n" + "\n".join(head) + '\n  "files": [\n' + ",\n".join(rows) + "\n  ]\n}\n")


if __name__ == "__main__":  # python -m placer.tiny.corpus: rewrite the manifest from this interpreter
    print(write_manifest())
