"""Progress bars on standard error (rich), silent when ``MOEPLACE_QUIET=1`` or ``quiet=True``."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr_console = Console(stderr=True)


def quiet_default() -> bool:
    return os.environ.get("MOEPLACE_QUIET", "") not in ("", "0")


class _Rate(TextColumn):
    """Items per second, with the unit given to ``progress_bar``."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]

        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        if not speed:
            return Text(f"? {unit}/s", style="progress.data.speed")
        if speed >= 1e6:
            return Text(f"{speed / 1e6:.2f}M {unit}/s", style="progress.data.speed")
        if speed >= 1e3:
            return Text(f"{speed / 1e3:.1f}k {unit}/s", style="progress.data.speed")
        return Text(f"{speed:.1f} {unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(
    total: float | None, description: str, unit: str = "it", quiet: bool | None = None, status: bool = False
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n)``; shows a bar with count, rate in ``unit``/s, elapsed and remaining time.

    With ``status=True`` the bar ends with a free text that ``advance(n, status="...")`` replaces.
    """
    if quiet is None:
        quiet = quiet_default()
    if quiet:
        yield lambda n, **fields: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=stderr_console, transient=False) as prog:
        task = prog.add_task(description, total=total, unit=unit, status="")
        yield lambda n, **fields: prog.update(task, advance=n, **fields)


@contextlib.contextmanager
def shard_progress(
    shards: int, total: float, description: str, unit: str = "entries", quiet: bool | None = None
) -> Iterator[Callable[[float], None]]:
    """Yield ``shard_done(n)``, called once per finished shard with its ``n`` items (of ``total``): the bar of
    ``progress_bar`` with the rate in ``unit``/s, ending with the shards done out of ``shards``."""
    with progress_bar(total, description, unit=unit, quiet=quiet, status=True) as advance:
        done = [0]

        def shard_done(n: float) -> None:
            done[0] += 1
            advance(n, status=f"{done[0]}/{shards} shards")

        advance(0, status=f"0/{shards} shards")
        yield shard_done


def warn(message: str) -> None:
    """One line on standard error: ``moeplace: warning: ...`` (printed with ``--quiet`` too: it is not progress)."""
    stderr_console.print(f"moeplace: warning: {message}", markup=False, highlight=False, soft_wrap=True)
