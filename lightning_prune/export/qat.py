"""Quantization-aware fine-tuning: a few epochs through the int8 simulation, pruned zeros and widths kept.

It trains through :class:`~lightning_prune.export.fakequant.Int8Simulation`; the weight grid is a function
of the weights, so ``quantize_static`` later reproduces the integers training saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from lightning_prune.export.fakequant import Int8Simulation
from lightning_prune.pruning.layers import prunable_modules


def qat_finetune(
    model: nn.Module,
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    calibration: Sequence[torch.Tensor],
    epochs: int,
    lr: float = 1e-4,
    momentum: float = 0.01,
    share_bits: int = 0,
) -> nn.Module:
    """A fine-tuned float copy of ``model`` (plain VGG, masks folded; not modified) that int8 rounding barely changes.

    SGD in eval mode (BatchNorm statistics kept): the weights only learn to absorb the rounding, hence the
    small ``lr``; exact zeros are put back after every step. ``share_bits``: through the weight sharing too.
    """
    assert epochs >= 1, "qat_finetune needs epochs >= 1"
    keep = {name: layer.weight.detach() != 0 for name, layer in prunable_modules(model).items()}
    sim = Int8Simulation(model, share_bits=share_bits).calibrate(calibration)
    for observer in sim.observers.values():
        observer.momentum = momentum
    params = [p for p in sim.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    weights = {name: layer.parametrizations.weight.original for name, layer in sim.layers.items()}
    sim.model.eval()
    with torch.enable_grad():  # the export runs under no_grad
        for _ in range(epochs):
            for x, y in train_batches:
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(sim(x), y).backward()
                optimizer.step()
                with torch.no_grad():
                    for name, w in weights.items():
                        w.mul_(keep[name])
    return sim.float_model()
