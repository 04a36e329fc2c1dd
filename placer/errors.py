"""Errors a user sees as one line on the terminal.

Every command catches these at the edge (``placer.cli.main``) and prints ``moeplace: error: <message>``
without a traceback (``--debug`` shows it). Messages name the file, the field and the value.

- ``UsageError`` (exit code 2): the user handed in something wrong: a missing or malformed file, an option
  value out of range, inputs that do not fit together.
- ``MoeplaceError`` (exit code 1): a failure while doing valid work (a solver that found nothing, a rank
  that died).
"""

from __future__ import annotations


class MoeplaceError(Exception):
    """A failure reported to the user as one line; exit code 1."""

    exit_code = 1


class UsageError(MoeplaceError):
    """Bad input from the user (files, options, values); exit code 2."""

    exit_code = 2


def where(path: object, field: str | None = None) -> str:
    """Format the ``file: field`` prefix of an error message."""
    return f"{path}: {field}" if field else f"{path}"
