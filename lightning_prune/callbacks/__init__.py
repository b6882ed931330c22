"""Thin Lightning adapters around the profiling and pruning functions."""

from lightning_prune.callbacks.channel import ChannelPruning
from lightning_prune.callbacks.profile import ProfileCallback
from lightning_prune.callbacks.staged import StagedPruning
from lightning_prune.callbacks.unstructured import MagnitudePruning, SensitivityScan

__all__ = ["ChannelPruning", "MagnitudePruning", "ProfileCallback", "SensitivityScan", "StagedPruning"]
