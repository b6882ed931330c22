"""Figures read off the model itself: serialized size and MACs."""

from __future__ import annotations

import io

import torch
from torch import nn
from torchprofile import profile_macs


def serialized_size_mb(model: nn.Module) -> float:
    """Bytes of ``torch.save(model.state_dict())`` / 1e6: what the checkpoint on disk costs."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def count_macs(model: nn.Module, image_shape: tuple[int, int, int] = (3, 32, 32)) -> int:
    """torchprofile's multiply-accumulate count for one image (it counts the dense operators that run)."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(profile_macs(model, torch.zeros(1, *image_shape, device=device)))
    finally:
        model.train(was_training)
