"""Entry point of the ``moeplace`` console script: errors become one line and an exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Iterator, Sequence

import click
import typer

from placer.cli.app import app, escape_help
from placer.cli.common import check_outputs_not_inputs, state
from placer.core.errors import MoeplaceError, first_line, plain_text

try:  # recent typer vendors its own click: its usage errors, Exit and Abort are not click's classes
    from typer._click.exceptions import ClickException as _TyperClickException
    from typer.exceptions import Abort as _TyperAbort, Exit as _TyperExit
except ImportError:  # pragma: no cover - typer that uses click itself
    _TyperClickException, _TyperAbort, _TyperExit = click.ClickException, click.exceptions.Abort, click.exceptions.Exit


def _err(msg: str) -> None:
    # Messages may quote libraries or servers: no escape codes reach the terminal, whatever the quoting site.
    print(f"moeplace: error: {plain_text(msg)}", file=sys.stderr, flush=True)


class Terminated(BaseException):
    """Raised by the SIGTERM handler, so that ``finally`` blocks (temporary files, rank processes) run."""


class Interrupted(BaseException):
    """Ctrl-C inside a command, carried past typer (which would turn it into a silent exit code 130)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the command runs, SIGTERM raises ``Terminated`` (in the main thread only, where signals land)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_after_success(debug: bool) -> Iterator[None]:
    """Hold back the warnings a command raises (a library's RuntimeWarning about the very values an error then
    names): shown once it succeeds, dropped when it fails, so that an error stays one line (``--debug`` shows
    them either way)."""
    with warnings.catch_warnings(record=True) as caught:
        ok = False
        try:
            yield
            ok = True
        finally:
            held = list(caught)
    if ok or debug:
        for w in held:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _command():
    """The click command tree of the app, each command checked for outputs that are also inputs and its
    Ctrl-C carried out as ``Interrupted``, its help texts escaped for Rich (brackets kept as text)."""
    def guard(cmd) -> None:
        if hasattr(cmd, "commands"):  # a group (typer may vendor its own click: no isinstance)
            for sub in cmd.commands.values():
                guard(sub)
        elif cmd.callback is not None:
            callback = cmd.callback

            def checked(*args, **kwargs):
                check_outputs_not_inputs(kwargs)
                try:
                    return callback(*args, **kwargs)
                except KeyboardInterrupt:
                    raise Interrupted() from None

            cmd.callback = checked

    root = typer.main.get_command(app)
    guard(root)
    escape_help(root)
    return root


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Exit codes: 0 success, 1 failure, 2 usage error (bad option, bad input file), 130 interrupted (SIGINT,
    Ctrl-C), 143 terminated (SIGTERM). An interrupted or terminated command removes its temporary files.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MOEPLACE_DEBUG", "") not in ("", "0")
    state["debug"] = debug
    try:
        with _sigterm_raises(), _warnings_after_success(debug):
            result = _command().main(args=args, prog_name="moeplace", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except (click.exceptions.Exit, _TyperExit) as exc:
        return exc.exit_code
    except (click.ClickException, _TyperClickException) as exc:  # a bad option: one line, like every error
        ctx = getattr(exc, "ctx", None)
        hint = f"; see {ctx.command_path} --help" if ctx is not None else ""
        _err(" ".join(exc.format_message().split()).rstrip(".") + hint)
        return exc.exit_code
    except (click.exceptions.Abort, _TyperAbort):
        _err("interrupted")
        return 130
    except (KeyboardInterrupt, Interrupted):
        _err("interrupted")
        return 130
    except Terminated:
        _err("terminated")
        return 143
    except MemoryError as exc:  # a shape too large for this machine: a failure, not a bug
        _err(f"out of memory ({first_line(exc, None, empty='no detail')}); try smaller inputs or options")
        return 1
    except MoeplaceError as exc:
        if state.get("debug"):
            traceback.print_exc()
        _err(str(exc))
        return exc.exit_code
    except Exception as exc:  # an unexpected bug: still one line unless --debug
        if state.get("debug"):
            traceback.print_exc()
        if _config_mistake(exc):  # a value a command passed on unchecked: bad input all the same
            _err(first_line(exc, None))
            return 2
        first = first_line(exc, None, empty="")
        _err(f"internal error: {type(exc).__name__}: {first} (run with --debug for the traceback)")
        return 1


# Where configuration dataclasses refuse a value (docs/errors.md; DESIGN: ``__post_init__`` raises ValueError).
_CONFIG_CHECKS = ("__post_init__", "require_positive_ints", "require_at_most")


def _config_mistake(exc: BaseException) -> bool:
    """``exc`` is a ValueError raised by a configuration dataclass's own validation (the innermost frame is one of
    ``_CONFIG_CHECKS``): a user's value that a command passed on without turning the error into ``InputError``."""
    tb = exc.__traceback__
    if not isinstance(exc, ValueError) or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name in _CONFIG_CHECKS


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
