"""The core of moeplace: what every other layer builds on, and nothing above it.

- ``trace/``: the routing trace format (Parquet), its streaming reader and writer;
- ``stats/``: routing statistics counted from traces (load, co-activation, transitions) and their files;
- ``topology``: GPUs, nodes, links and the one time model of expert compute and communication;
- ``placement``: the ``Placement`` (which expert each physical slot holds) and its solve report;
- ``placement_io``: the versioned placement JSON (``schemas/``);
- ``cost``: the cost model, what a placement costs on a trace;
- ``errors``, ``fileio``: the project's error types and atomic output files.

Modules here take arrays, dataclasses and paths and return them: they never import ``solvers`` nor the
application (``placer.cli``, ``placer.evaluate``, ``placer.export``, ...); ``tests/test_architecture.py``
checks it.
"""
