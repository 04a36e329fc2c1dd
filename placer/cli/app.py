"""The ``moeplace`` Typer app: the root options, and every command module of ``placer.cli`` loaded.

Every module of the package that defines ``register(app)`` is loaded (in name order) and adds its command(s)
to the app; a new command is a new module, with no list to edit. Command modules import what loads numba,
pyarrow, jsonschema, OR-Tools or torch (the solvers, the cost model, traces, torch) inside the command function,
each with a ``# lazy:`` comment, so that ``moeplace --help`` and light commands start fast
(docs/architecture.md).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
from pathlib import Path

import typer

from placer.cli.common import state

app = typer.Typer(
    name="moeplace",
    help=(
        "Decide which GPU holds which expert of a Mixture-of-Experts model: record routing (trace, import, "
        "synth), learn load and affinity (stats), solve the placement (solve), measure it (evaluate, "
        "replay) and export it to serving stacks (export)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an error."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    state["debug"] = debug
    if quiet:
        os.environ["MOEPLACE_QUIET"] = "1"


def reflow(doc: str | None) -> str | None:
    """A docstring as ``--help`` paragraphs: the lines of a paragraph joined into one (the terminal wraps it at
    its width), blank lines kept between paragraphs, list items (``- ``) and indented lines kept as lines."""
    if not doc:
        return doc
    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines = para.splitlines()
        if any(line.startswith(("- ", "  ", "|", "[bold]")) for line in lines):
            out.append("\n".join(lines))
        else:
            out.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(out)


# What Rich reads as a markup tag (rich.markup.RE_TAGS): a backslash-free "[" then a letter, "#", "/" or "@", up to
# the next "]". Help text is rendered as Rich markup, so "phy2log[l][e]" or "[default: ...]" would vanish.
_TAG = re.compile(r"(\\*)\[([a-z#/@][^\[]*?)\]")
# The styles help text uses on purpose; every other bracket is text.
_STYLES = {"bold", "/bold", "dim", "/dim", "italic", "/italic", "/"}


def escape_markup(text: str | None) -> str | None:
    """``text`` with every bracket that Rich would take for a markup tag escaped (``\\[``), except the deliberate
    styles of ``_STYLES``; already escaped brackets are kept, so applying it twice changes nothing."""
    if not text:
        return text

    def one(m: re.Match) -> str:
        slashes, tag = m.group(1), m.group(2)
        if len(slashes) % 2 or tag in _STYLES:
            return m.group(0)
        return f"{slashes}\\[{tag}]"

    return _TAG.sub(one, text)


def escape_help(cmd) -> None:
    """Escape, in place, the help of the click command ``cmd``, of its parameters and of its sub-commands: the one
    place every --help text passes before Rich renders it (``placer.cli.main._command``)."""
    cmd.help = escape_markup(cmd.help)
    for param in cmd.params:
        if getattr(param, "help", None):
            param.help = escape_markup(param.help)
    for sub in getattr(cmd, "commands", {}).values():
        escape_help(sub)


def _reflow_help(group: typer.Typer) -> None:
    """Reflow the help of every command of ``group`` and of its sub-groups (``bench``, ``stats``)."""
    for cmd in group.registered_commands:
        if cmd.help is None and cmd.callback is not None:
            cmd.help = reflow(cmd.callback.__doc__)
    for sub in group.registered_groups:
        _reflow_help(sub.typer_instance)
    info = group.info
    if isinstance(info.help, str):
        info.help = reflow(info.help)


def _load_commands() -> None:
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("app", "main", "common"):
            continue
        module = importlib.import_module(f"placer.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
    _reflow_help(app)


_load_commands()
