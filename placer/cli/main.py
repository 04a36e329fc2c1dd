"""Entry point of the ``moeplace`` console script: errors become one line and an exit code."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Sequence

import click

from placer.core.errors import MoeplaceError, first_line

try:  # recent typer vendors its own click: its usage errors, Exit and Abort are not click's classes
    from typer._click.exceptions import ClickException as _TyperClickException
    from typer.exceptions import Abort as _TyperAbort, Exit as _TyperExit
except ImportError:  # pragma: no cover - typer that uses click itself
    _TyperClickException, _TyperAbort, _TyperExit = click.ClickException, click.exceptions.Abort, click.exceptions.Exit


def _err(msg: str) -> None:
    print(f"moeplace: error: {msg}", file=sys.stderr, flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Exit codes: 0 success, 1 failure, 2 usage error (bad option, bad input file), 130 interrupted.
    """
    from placer.cli import app, state

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MOEPLACE_DEBUG", "") not in ("", "0")
    state["debug"] = debug
    try:
        result = app(args=args, prog_name="moeplace", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except (click.exceptions.Exit, _TyperExit) as exc:
        return exc.exit_code
    except (click.ClickException, _TyperClickException) as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, _TyperAbort):
        _err("aborted")
        return 130
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except MoeplaceError as exc:
        if state.get("debug"):
            traceback.print_exc()
        _err(str(exc))
        return exc.exit_code
    except Exception as exc:  # an unexpected bug: still one line unless --debug
        if state.get("debug"):
            traceback.print_exc()
        first = first_line(exc, None, empty="")
        _err(f"internal error: {type(exc).__name__}: {first} (run with --debug for the traceback)")
        return 1


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
