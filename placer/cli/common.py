"""Small helpers shared by the command modules: output tables and JSON on standard output."""

from __future__ import annotations

import json
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from placer.core.errors import InputError


class UsageError(InputError):
    """A command-line mistake: an option out of range, options that do not fit together; exit code 2."""


def console() -> Console:
    """A console on the current standard output (looked up at call time, so tests can capture it)."""
    return Console(highlight=False, soft_wrap=False)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def kv_table(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    """A two-column table of names and values."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    for k, v in rows:
        t.add_row(str(k), str(v))
    return t
