"""Fine-grained magnitude pruning with ``torch.nn.utils.prune``: masks, and the models that carry them.

Masks live as ``weight_orig`` + ``weight_mask`` so pruned weights stay exactly zero through
fine-tuning (the forward pass multiplies by the mask, whatever SGD does to ``weight_orig``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_prune.pruning.layers import prunable_modules

Masks = Mapping[str, torch.Tensor]


def check_layer_names(names: Sequence[str], model: nn.Module, option: str) -> None:
    """Unknown layer names fail with the list of valid ones (the options' one check of them)."""
    valid = list(prunable_modules(model))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"{option}: unknown layer(s) {', '.join(unknown)}; prunable layers are {', '.join(valid)}")


def is_masked(module: nn.Module) -> bool:
    return hasattr(module, "weight_mask") and hasattr(module, "weight_orig")


def _refresh_masked_weight(module: nn.Module, incompatible_keys: object = None) -> None:
    """Recompute ``weight`` from the loaded ``weight_orig`` and mask (prune's hook does only in forward)."""
    if is_masked(module):
        module.weight = module.weight_orig * module.weight_mask


def keep_fresh_on_load(module: nn.Module) -> None:
    """Have a masked layer recompute ``weight`` after every ``load_state_dict`` (registered once)."""
    if _refresh_masked_weight not in module._load_state_dict_post_hooks.values():
        module.register_load_state_dict_post_hook(_refresh_masked_weight)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The mask ``prune.l1_unstructured`` would give ``weight`` at ``sparsity`` (same ties, same count)."""
    return prune.L1Unstructured(amount=sparsity).compute_mask(weight, torch.ones_like(weight))


def magnitude_masks(weight: torch.Tensor, sparsities: Sequence[float]) -> list[torch.Tensor]:
    """:func:`magnitude_mask` at every level from one partial sort (a cut inside a tie asks top-k itself)."""
    magnitude = weight.detach().abs()
    flat = magnitude.flatten().cpu().numpy()
    n = flat.size
    counts = [round(s * n) for s in sparsities]  # torch.nn.utils.prune's count for a float amount
    cuts = sorted({i for k in counts if 0 < k < n for i in (k - 1, k)})
    ordered = np.partition(flat, cuts) if cuts else flat
    masks = []
    for s, k in zip(sparsities, counts):
        if k == 0:
            masks.append(torch.ones_like(weight))
        elif k == n:
            masks.append(torch.zeros_like(weight))
        elif ordered[k - 1] < ordered[k]:
            masks.append((magnitude > float(ordered[k - 1])).to(weight.dtype))
        else:
            masks.append(magnitude_mask(weight, s))
    return masks


def apply_magnitude_pruning(model: nn.Module, sparsities: Mapping[str, float], whole_layers: bool = False
                            ) -> dict[str, float]:
    """Mask ``round(s * n)`` of each named layer's weights by magnitude; the achieved sparsities. Layers at 0
    get no mask; ``whole_layers`` allows a sparsity of 1 (as one global threshold can give)."""
    modules = prunable_modules(model)
    achieved = {}
    for name, s in sparsities.items():
        assert name in modules and (0 <= s < 1 or (whole_layers and s == 1)), f"sparsities.{name}: {s!r}"
        s = float(s)
        module = modules[name]
        if s > 0:
            prune.l1_unstructured(module, "weight", amount=s)
            keep_fresh_on_load(module)
        w = module.weight.detach()
        achieved[name] = 1 - int(torch.count_nonzero(w)) / w.numel()
    return achieved


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean masks of the layers that carry a ``torch.nn.utils.prune`` mask, by layer name."""
    return {name: m.weight_mask.detach().bool().cpu() for name, m in prunable_modules(model).items() if is_masked(m)}


def restore_masks(model: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Identity masks where ``state_dict`` holds masks, so that it loads into a fresh model."""
    restored = []
    for name, module in prunable_modules(model).items():
        if f"{prefix}{name}.weight_mask" in state_dict and not is_masked(module):
            prune.identity(module, "weight")
            keep_fresh_on_load(module)
            restored.append(name)
    return restored


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on masked models (whose autograd-computed ``weight`` it refuses)."""
    masked = [m for m in prunable_modules(model).values() if is_masked(m)]
    saved = [m.weight for m in masked]
    try:
        for m, w in zip(masked, saved):
            m.weight = w.detach()
        return copy.deepcopy(model)
    finally:
        for m, w in zip(masked, saved):
            m.weight = w


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (``prune.remove``): pruned weights become plain zeros."""
    for module in prunable_modules(model).values():
        if is_masked(module):
            prune.remove(module, "weight")
    return model


def layer_sizes(model: nn.Module) -> dict[str, int]:
    """Weight count of every prunable layer (biases are never pruned)."""
    return {name: m.weight.numel() for name, m in prunable_modules(model).items()}


def overall_sparsity(sparsities: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Fraction of all prunable weights removed, from parameter counts (layers not named stay dense)."""
    total = sum(sizes.values())
    return sum(round(sparsities.get(n, 0.0) * k) for n, k in sizes.items()) / total


def ensure_masks(model: nn.Module) -> list[str]:
    """All-ones masks on every unmasked layer: the parameters stay the same through later stages (resumes)."""
    added = []
    for name, module in prunable_modules(model).items():
        if not is_masked(module):
            prune.custom_from_mask(module, "weight", torch.ones_like(module.weight, dtype=torch.bool))
            keep_fresh_on_load(module)
            added.append(name)
    return added


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Apply keep-masks, overwriting an existing mask in place (the optimizer keeps its ``weight_orig``)."""
    modules = prunable_modules(model)
    assert set(masks) <= set(modules), f"masks of unknown layers: {sorted(set(masks) - set(modules))}"
    for name, mask in masks.items():
        module = modules[name]
        if is_masked(module):
            with torch.no_grad():
                module.weight_mask.copy_(mask.to(module.weight_mask.device, module.weight_mask.dtype))
            module.weight = module.weight_orig * module.weight_mask
        else:
            prune.custom_from_mask(module, "weight", mask.to(module.weight.device))
            keep_fresh_on_load(module)


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean keep-masks of every conv/linear layer (all ones where unmasked), on the model's device."""
    return {
        name: (module.weight_mask.bool() if is_masked(module) else torch.ones_like(module.weight, dtype=torch.bool))
        for name, module in prunable_modules(model).items()
    }


def mask_sparsity(masks: Masks) -> float:
    """Fraction of zeros over all the masks."""
    total = sum(m.numel() for m in masks.values())
    return sum(int((~m.bool()).sum()) for m in masks.values()) / total if total else 0.0
