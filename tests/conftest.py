"""Shared fixtures: run the command line in-process and capture what it prints."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

os.environ.setdefault("MOEPLACE_QUIET", "1")
os.environ.setdefault("MOEPLACE_CHECK_SEARCH", "1")  # local search checks its predicted changes (solvers/localsearch.py)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> CliResult``: run ``moeplace args...`` in this process."""
    from placer.cli.main import run

    def _run(*args: object) -> CliResult:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return _run


def assert_one_line_error(res: CliResult, code: int, *fragments: str) -> None:
    """The command failed with ``code`` and one line on stderr containing every fragment, no traceback."""
    assert res.code == code, (res.code, res.out, res.err)
    lines = [l for l in res.err.splitlines() if l.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("moeplace: error: "), res.err
    assert "Traceback" not in res.err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
