"""Benchmarks for bindu: figures, not timed tests. ``python -m bench.run [--quick]``."""
