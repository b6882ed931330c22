"""Thin Lightning adapters around the profiling and pruning functions."""

from lightning_prune.callbacks.profile import ProfileCallback

__all__ = ["ProfileCallback"]
