"""The ``moeplace`` command line: one thin module per command (parse, call, print).

``app.py`` builds the Typer app from every command module here, ``main.py`` is the console script (errors
become one line and an exit code), ``common.py`` holds what the commands share (output tables, usage errors,
the root options' state). Importing the package loads no command, so any module can use ``common.py``.
"""
