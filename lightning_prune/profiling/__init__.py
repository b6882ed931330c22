"""Measuring a model: size, parameters, MACs, latency, memory, energy and accuracy."""

from lightning_prune.profiling.accuracy import evaluate
from lightning_prune.profiling.profile import ProfileSettings, profile_model

__all__ = ["ProfileSettings", "evaluate", "profile_model"]
