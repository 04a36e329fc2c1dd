"""Atomic output files: write to a temporary file beside the target, then rename.

A crash or Ctrl-C never leaves a half-written file at the output path, and a file the user already had is
only replaced once the new one is complete. The temporary file is named ``.NAME.HOST-PID.XXXX.tmp`` and is
removed on any exception (``KeyboardInterrupt`` and the command line's SIGTERM included). Only SIGKILL (or a
power cut) can leave one behind; the next run that writes the same output removes those of dead processes of
this host (``remove_stale_temps``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from placer.core.errors import InputError, MoeplaceError, first_line


def output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) for outputs; a one-line ``InputError`` if it cannot be, or
    cannot be written (a file in the way, a read-only file system, no permission)."""
    folder = Path(path) if str(path) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{folder}: is a file; the {what} must be a folder") from None
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the {what} ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: the {what} is not writable")
    return folder


def prepare_output(path: str | os.PathLike) -> Path:
    """Check that ``path`` can be written as a file, create its parent folder and remove the temporary files
    that killed runs writing the same output left behind."""
    out = Path(path)
    if out.exists() and out.is_dir():
        raise InputError(f"{out}: output path is a directory, expected a file name")
    try:
        output_folder(out.parent)
    except InputError as exc:
        raise InputError(f"{out}: {exc}") from None
    remove_stale_temps(out)
    return out


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temp_prefix(out: Path) -> str:
    return f".{out.name}."


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove ``out``'s temporary files (``.NAME.HOST-PID.XXXX.tmp``) whose process, on this host, is dead: what
    a SIGKILL left behind. Those of live processes (a concurrent run) and of other hosts are kept."""
    pattern = re.compile(re.escape(_temp_prefix(out)) + r"(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp")
    host, removed = _host(), []
    parent = out.parent if str(out.parent) else Path(".")
    try:
        candidates = list(parent.glob(_temp_prefix(out) + "*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        m = pattern.fullmatch(tmp.name)
        if m is None or m["host"] != host or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or a number no process has: kept, to be safe)
    return True


def temp_beside(out: Path, suffix: str = ".tmp") -> Path:
    """A new empty temporary file ``.NAME.HOST-PID.XXXX.tmp`` in ``out``'s folder, with the permissions a plain
    ``open`` would give (mkstemp alone makes it private, 0600, and the rename would keep that)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{_temp_prefix(out)}{_host()}-{os.getpid()}.", suffix=suffix,
                                    dir=out.parent)
    except OSError as exc:
        raise InputError(f"{out}: cannot write in output folder {out.parent} ({exc.strerror})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def replace_atomic(tmp: Path, out: Path) -> None:
    """Rename the finished temporary file onto ``out`` (an OSError becomes a one-line ``InputError``)."""
    try:
        os.replace(tmp, out)
    except OSError as exc:
        raise InputError(f"{out}: cannot replace the output file ({exc.strerror})") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` when the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is untouched.
    """
    out = prepare_output(path)
    tmp = temp_beside(out)
    try:
        try:
            yield tmp
        except OSError as exc:  # a full disk, a quota: a failure to write, not a bug
            raise MoeplaceError(f"{out}: cannot write ({exc.strerror or first_line(exc)})") from None
        replace_atomic(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (keys in insertion order, newline at the end)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``path`` as a Path if it is an existing file, else raise a InputError naming it."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: {what} not found")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a {what}")
    return p


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON a file holds; a one-line InputError naming the file if it is missing, a folder, not text or not
    JSON (``what`` names the content expected, for example "SGLang expert location")."""
    p = require_file(path, what)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a text file; expected {what} JSON") from None
    except ValueError as exc:
        raise InputError(f"{p}: not valid JSON ({first_line(exc, 160)})") from None


def read_model_config(model_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The ``config.json`` of a Hugging Face checkpoint folder, as (its path, a dict), with one-line errors
    for a missing folder, a file given instead, a missing or unreadable config."""
    model = Path(model_dir)
    if not model.exists():
        raise InputError(f"{model}: model folder not found")
    if not model.is_dir():
        raise InputError(f"{model}: is a file; --model takes a Hugging Face checkpoint folder")
    cfg_path = model / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{model}: no config.json; not a Hugging Face checkpoint folder")
    cfg = read_json(cfg_path, "config.json")
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    return cfg_path, cfg
