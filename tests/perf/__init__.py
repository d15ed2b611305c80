"""Benchmarks (run as modules, e.g. ``python -m tests.perf.bench_locks``); not part of the test suite."""
