"""``moeplace demo``: the whole pipeline on the bundled default."""

from __future__ import annotations

from pathlib import Path

import typer

from placer.cli.common import console


def demo(out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the demo's files.")) -> None:
    """Run the main job on the bundled default, end to end (a few minutes on 2 cores)."""
    # lazy: loads torch, the solvers (numba, OR-Tools) and jsonschema; kept out of `moeplace --help`
    from placer.demo import run_demo

    run_demo(out, console())


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
