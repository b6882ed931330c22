"""The hidden linear layers' smallest weights zeroed, and kept zero through fine-tuning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

HIDDEN_LINEAR = ("classifier.0", "classifier.3")


def check_linear_sparsity(sparsity: float | None, option: str = "linear_sparsity") -> None:
    if sparsity is not None and (isinstance(sparsity, bool) or not 0 <= sparsity < 1):
        raise ValueError(f"{option} must be a fraction of weights to zero in [0, 1) or null, got {sparsity!r}")


def prune_linear(model: nn.Module, sparsity: float, names: Sequence[str] = HIDDEN_LINEAR) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude ``sparsity`` of each hidden linear layer's weights, in place.

    The mask is ``prune.l1_unstructured``'s, but applied to the plain weight: no ``weight_orig``
    (the checkpoint loads into a plain VGG) and no re-registration, which would move ``weight``
    after ``bias`` and misalign a resumed optimizer. :func:`hold_zeros` keeps the zeros through
    fine-tuning. The output layer stays dense: it is small and each of its rows is one class.
    Returns the keep-masks.
    """
    check_linear_sparsity(sparsity)
    modules = dict(model.named_modules())
    masks = {}
    for name in names:
        weight = modules[name].weight
        mask = prune.L1Unstructured(amount=sparsity).compute_mask(weight.detach(), torch.ones_like(weight))
        with torch.no_grad():
            weight.mul_(mask)
        masks[name] = mask.bool()
    return masks


def zero_masks(model: nn.Module, names: Sequence[str] = HIDDEN_LINEAR) -> dict[str, torch.Tensor]:
    """The keep-masks of linear layers pruned earlier, read back from their zeros (resumed fits)."""
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach() != 0 for name in names}


@torch.no_grad()
def hold_zeros(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Re-zero pruned weights after an optimizer step (whatever the optimizer does to them)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        modules[name].weight.mul_(mask.to(modules[name].weight.device))
