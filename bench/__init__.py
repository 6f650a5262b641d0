"""Benchmark harness: `python -m bench` (or `make bench`) measures and records figures."""
