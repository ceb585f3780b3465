"""Benchmarks: run each as `python -m bench.<name>`; figures go to bench/RESULTS.md."""
