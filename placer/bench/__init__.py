"""Benchmark commands (``moeplace bench <name>``): one module per benchmark, each with ``register(bench_app)``."""
