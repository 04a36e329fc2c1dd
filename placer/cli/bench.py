"""``moeplace bench``: benchmarks as commands (results go into BENCHMARKS.md with the exact command).

Every module of the ``placer.bench`` package that defines ``register(bench_app)`` adds its subcommand(s)
(``moeplace bench stats``, ...); a new benchmark is a new module there. ``--help`` imports every benchmark
module, so they import what loads numba, pyarrow, the solvers or torch inside their functions (``# lazy:``).
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import placer.bench as pkg

bench_app = typer.Typer(
    help="Benchmarks: each times one capability against a baseline measured in the same run and prints ratios.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _load_benchmarks() -> None:
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        register = getattr(importlib.import_module(f"{pkg.__name__}.{info.name}"), "register", None)
        if register is not None:
            register(bench_app)


def register(app: typer.Typer) -> None:
    _load_benchmarks()
    app.add_typer(bench_app, name="bench")
