"""Small helpers shared by the command modules: output tables and JSON on standard output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from rich.console import Console
from rich.table import Table

from placer.core.errors import InputError


# What the root options set for the command that runs (``--debug``), read by main and by the commands.
state = {"debug": False}


class UsageError(InputError):
    """A command-line mistake: an option out of range, options that do not fit together; exit code 2."""


def console(min_width: int | None = None) -> Console:
    """A console on the current standard output (looked up at call time, so tests can capture it); in a file or
    a pipe at least ``min_width`` columns (room for a wide table's every column instead of rich's default 80)."""
    con = Console(highlight=False, soft_wrap=False)
    if min_width is not None and not con.is_terminal:
        con.width = max(con.width, min_width)
    return con


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


# Parameters that name files or folders a command writes; every other path parameter is read.
OUTPUT_PARAMS = ("out", "graph", "plots", "plot")


def _paths(value: Any) -> list[Path]:
    if isinstance(value, Path):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, Path)]
    return []


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_outputs_not_inputs(params: Mapping[str, Any]) -> None:
    """Refuse a command whose output path names one of its inputs (or another of its outputs): writing it
    would destroy the input. ``params``: the command's parsed parameters by name (``placer.cli.main`` checks
    every command with it before running it)."""
    outputs = [(name, p) for name in OUTPUT_PARAMS for p in _paths(params.get(name))]
    inputs = [(name, p) for name, v in params.items() if name not in OUTPUT_PARAMS for p in _paths(v)]
    for i, (oname, out) in enumerate(outputs):
        for iname, inp in inputs + outputs[:i]:
            if _same(out, inp):
                raise UsageError(f"{out}: --{oname.replace('_', '-')} names the same file as {_option(iname)} {inp}; "
                                 f"the output must be outside the inputs (writing it would destroy that file)")


def _option(name: str) -> str:
    return "an input" if name in ("inputs", "paths", "files", "traces", "source", "file", "trace", "current",
                                  "placement") else f"--{name.replace('_', '-')}"
