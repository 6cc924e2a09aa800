"""Benchmarks: `python -m bench.speed` (see BENCHMARKS.md for the measured table)."""
