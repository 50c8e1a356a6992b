"""Benchmark scripts (`python benchmarks/<name>.py`); `vlablocks bench` imports their measuring functions."""
