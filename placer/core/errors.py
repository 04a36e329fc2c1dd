"""The project's errors: what a user sees as one line on the terminal.

The command line catches these at its edge (``placer.cli.main``) and prints ``moeplace: error: <message>``
without a traceback (``--debug`` shows it). Messages name the file, the field and the value.

- ``InputError`` (exit code 2): the input is wrong: a missing or malformed file, a value out of range,
  inputs that do not fit together. The command line's own ``UsageError`` (an option it cannot use) is one.
- ``MoeplaceError`` (exit code 1): a failure while doing valid work (a solver that found nothing, a rank
  that died).

Configuration dataclasses (``Topology``, ``PlacementProblem``, ...) raise ``ValueError`` naming the values, as
Python code expects; the layer that read the values from a file or an option turns it into ``InputError``.
"""

from __future__ import annotations

import numbers
import re


class MoeplaceError(Exception):
    """A failure reported to the user as one line; exit code 1."""

    exit_code = 1


class InputError(MoeplaceError):
    """Bad input (files, values, combinations); exit code 2."""

    exit_code = 2


def where(path: object, field: str | None = None) -> str:
    """Format the ``file: field`` prefix of an error message."""
    return f"{path}: {field}" if field else f"{path}"


# Terminal escape sequences (ANSI CSI such as torch's bold "\x1b[1m", OSC, two-byte ESC codes) and the other
# control characters but tab and newline: a quoted library or server message must not restyle the terminal.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])|[\x00-\x08\x0b-\x1f\x7f]")


def plain_text(text: str) -> str:
    """``text`` without terminal escape sequences and control characters (tabs and newlines are kept)."""
    return _ESCAPES.sub("", text)


def first_line(exc: BaseException, limit: int | None = 200, empty: str | None = None) -> str:
    """The first line of an exception's message (at most ``limit`` characters, escape codes removed), for
    one-line errors that quote a library's complaint; an empty message gives ``empty`` (default: the
    exception's type name)."""
    text = plain_text(str(exc)).strip()
    line = text.splitlines()[0] if text else (type(exc).__name__ if empty is None else empty)
    return line[:limit] if limit else line


def require_positive_ints(obj: object, names: tuple[str, ...], label=lambda name: name) -> None:
    """Raise ``ValueError`` unless every named attribute of ``obj`` (a configuration dataclass) is an integer
    (Python or NumPy, not bool) of at least 1; ``label`` turns an attribute name into the name the user knows."""
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{label(name)} must be a positive integer, got {v!r}")
