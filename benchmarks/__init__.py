"""Benchmarks: case definitions (cases.py) shared by the pytest-benchmark suites (bench_*.py) and `bigmodel bench`."""
