"""Benchmarks: case definitions (cases.py) shared by the pytest-benchmark suites (bench_*.py) and `bigmodel bench`."""

# cases.py registers attention_cases.py, which imports cases.py: importing cases first makes any import order work.
from . import cases  # noqa: E402,F401
