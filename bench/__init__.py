"""Benchmarks: `python -m bench` (or `scripts/bench`); see README, "Benchmarks"."""
