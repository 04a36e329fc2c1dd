"""``moeplace demo``: the whole pipeline on the bundled default."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the demo's files.")) -> None:
    """Run the main job on the bundled default, end to end (a few minutes on 2 cores)."""
    from placer.cli.common import console
    from placer.demo import run_demo

    run_demo(out, console())


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
