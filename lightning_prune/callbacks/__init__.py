"""Thin Lightning adapters: the pruning callbacks decide, the recorder measures and writes, RunInfo names the run."""

from lightning_prune.callbacks.base import PruningCallback, PruningRecord
from lightning_prune.callbacks.channel import ChannelPruning
from lightning_prune.callbacks.recorder import Recorder
from lightning_prune.callbacks.sensitivity import SensitivityScan
from lightning_prune.callbacks.staged import StagedPruning
from lightning_prune.callbacks.unstructured import MagnitudePruning

__all__ = ["ChannelPruning", "MagnitudePruning", "PruningCallback", "PruningRecord", "Recorder", "SensitivityScan",
           "StagedPruning"]
