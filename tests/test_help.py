"""Every command's --help reads as paragraphs at 80 columns: no hard line breaks inside a paragraph."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from placer.cli.app import app, reflow


def _commands(group, prefix=()):
    for cmd in group.registered_commands:
        name = cmd.name or cmd.callback.__name__.replace("_", "-")
        yield prefix + (name,), cmd
    for sub in group.registered_groups:
        yield from _commands(sub.typer_instance, prefix + (sub.name,))


COMMANDS = list(_commands(app))


def test_reflow_joins_paragraph_lines_and_keeps_lists():
    doc = """First line
    goes on here.

    - item one
    - item two

    Last."""
    assert reflow(doc) == "First line goes on here.\n\n- item one\n- item two\n\nLast."


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_paragraphs_have_no_hard_breaks(path, cmd):
    assert cmd.help, f"{' '.join(path)} has no help"
    for para in cmd.help.split("\n\n"):
        lines = para.splitlines()
        if len(lines) > 1:
            assert all(re.match(r"(- |  |\||\[bold\])", line) for line in lines), (path, para)


def test_a_rendered_help_fills_its_lines():
    env = {"COLUMNS": "80", "PATH": ""}
    out = subprocess.run([sys.executable, "-m", "placer", "rebalance", "--help"], capture_output=True, text=True,
                         env=env).stdout
    desc = out.split("Arguments")[0].splitlines()
    text = [line.strip() for line in desc if line.strip() and not line.strip().startswith(("Usage", "╭"))]
    # Lines of a paragraph run to the width (the last line of a paragraph may be short).
    short = [t for t, nxt in zip(text, text[1:]) if len(t) < 60 and nxt[:1].islower()]
    assert not short, short


def test_readme_command_table_names_every_command():
    """The README's command table is the front door: every top-level command has a row."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `moeplace "))
    missing = [p[0] for p, _ in COMMANDS if len(p) == 1 and f"`moeplace {p[0]}" not in table]
    groups = [g.name for g in app.registered_groups if f"`moeplace {g.name}" not in table]
    assert not missing and not groups, f"README command table lacks: {missing + groups}"
