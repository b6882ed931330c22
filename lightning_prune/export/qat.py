"""Quantization-aware fine-tuning: a few epochs through the int8 simulation, pruned zeros and widths kept.

The network trains with its weights and layer inputs rounded as ONNX Runtime will round them
(:class:`~lightning_prune.export.fakequant.Int8Simulation`, straight-through gradients), so the float
weights it ends with sit where int8 loses little. The weight grid is a function of the weights
themselves (per-channel ``max|w| / 127``), so ``quantize_static`` later reproduces exactly the
integers that training saw; activation ranges follow a moving min/max during training and are
calibrated again by the exporter. The network trains in eval mode (BatchNorm keeps its running
statistics, dropout is off: the weights only learn to absorb the rounding, from a model already
fine-tuned to its minimum, hence a small learning rate), every weight that was exactly 0.0 is put
back to 0.0 after each step, and no layer changes shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from lightning_prune.export.fakequant import Int8Simulation
from lightning_prune.pruning.layers import prunable_modules


def _zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: (layer.weight.detach() != 0) for name, layer in prunable_modules(model).items()}


def qat_finetune(
    model: nn.Module,
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    calibration: Sequence[torch.Tensor],
    epochs: int,
    lr: float = 1e-4,
    momentum: float = 0.01,
    share_bits: int = 0,
) -> nn.Module:
    """A fine-tuned float copy of ``model`` (plain VGG, masks folded) that int8 rounding barely changes.

    Args:
        model: The float network; not modified.
        train_batches: (images, labels) batches, iterated once per epoch (e.g. an augmented loader).
        calibration: Batches that set the initial activation ranges.
        epochs: Passes over ``train_batches`` (>= 1).
        lr: SGD learning rate (momentum 0.9, no weight decay: zeros must stay zeros).
        momentum: Weight of each batch in the moving activation range.
        share_bits: Train through the export's weight sharing too (Deep Compression's retraining of the
            shared weights, here with the levels found again at every step).

    The ranges follow the batches in eval mode too: :class:`ActivationQuant` moves them whenever
    ``momentum`` > 0 and gradients are on.
    """
    assert epochs >= 1, "qat_finetune needs epochs >= 1"
    keep = _zero_masks(model)
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
