"""Benchmarks of the pruning algorithms (``make bench``); run as ``python -m benchmarks.bench``."""
