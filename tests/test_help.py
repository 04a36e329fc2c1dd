"""Every command's --help reads as paragraphs at 80 columns: no hard line breaks inside a paragraph."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from placer.cli.app import app, escape_markup, reflow


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


def _click_tree(cmd, path=("moeplace",)):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _click_tree(sub, path + (name,))


def _help_texts():
    """(where, text) for the help of every command, sub-command, argument and option, as ``moeplace`` runs it."""
    from placer.cli.main import _command

    for path, cmd in _click_tree(_command()):
        yield " ".join(path), cmd.help or ""
        for param in cmd.params:
            yield f"{' '.join(path)} {param.name}", getattr(param, "help", None) or ""


def test_rich_markup_loses_no_help_text():
    """Help is rendered as Rich markup: a bracket such as ``phy2log[l][e]`` or ``[default: ...]`` must come out as
    text (escaped), not be taken for a style tag and deleted. Only the deliberate styles may be markup."""
    from rich.markup import render

    lost = []
    for where, text in _help_texts():
        expected = re.sub(r"(?<!\\)\[/?(bold|dim|italic)?\]", "", text).replace("\\[", "[")
        plain = render(text).plain
        if plain != expected:
            lost.append((where, expected, plain))
    assert not lost, lost


def test_escape_markup_is_idempotent_and_keeps_styles():
    text = "old expert phy2log[l][e] [default: 'weights'] \\[layers, experts] [bold]x[/bold] [L, E] [-o]"
    once = escape_markup(text)
    assert once == ("old expert phy2log\\[l]\\[e] \\[default: 'weights'] \\[layers, experts] [bold]x[/bold] "
                    "[L, E] [-o]")
    assert escape_markup(once) == once


def test_metavars_do_not_wrap_at_80_columns():
    """A choice list shown as the metavar (``<auto|long|...>``) must fit its column: at 80 columns a long one
    wraps mid-word ("vllm" / "-routed")."""
    from click.testing import CliRunner

    from placer.cli.main import _command

    root = _command()
    broken = []
    for path, cmd in _click_tree(root):
        out = CliRunner().invoke(root, [*path[1:], "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}).output
        broken += [(path, line) for line in out.splitlines() if re.search(r"<[^<>\s]*\|[^<>\s]*(\s|│|$)", line)]
    assert not broken, broken
