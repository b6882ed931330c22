"""Pruning algorithms as plain functions on tensors and modules (no Lightning here)."""
