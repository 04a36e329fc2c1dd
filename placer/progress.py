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

stderr_console = Console(stderr=True)


def quiet_default() -> bool:
    return os.environ.get("MOEPLACE_QUIET", "") not in ("", "0")


class _Rate(TextColumn):
    """Items per second, with the unit given to ``progress_bar``."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

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
