"""Fine-grained magnitude pruning with ``torch.nn.utils.prune``: masks, and the models that carry them.

Masks live as ``weight_orig`` + ``weight_mask`` so pruned weights stay exactly zero through
fine-tuning (the forward pass multiplies by the mask, whatever SGD does to ``weight_orig``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from lightning_prune.pruning.layers import prunable_modules

Masks = Mapping[str, torch.Tensor]

def check_sparsity(value: float, option: str) -> float:
    """A sparsity must be in [0, 1): 1 would delete the layer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{option}: sparsity must be a number in [0, 1), got {value!r}")
    return float(value)


def check_layer_names(names: Sequence[str], model: nn.Module, option: str) -> None:
    """Unknown layer names fail with the list of valid ones."""
    valid = list(prunable_modules(model))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"{option}: unknown layer(s) {', '.join(unknown)}; prunable layers are {', '.join(valid)}")


def is_masked(module: nn.Module) -> bool:
    return hasattr(module, "weight_mask") and hasattr(module, "weight_orig")


def _refresh_masked_weight(module: nn.Module, incompatible_keys: object = None) -> None:
    """Recompute ``weight`` from the just-loaded ``weight_orig`` and ``weight_mask``.

    ``torch.nn.utils.prune`` only refreshes ``weight`` in the forward pre-hook, so right after
    ``load_state_dict`` it would still show the pre-load values to anyone reading it.
    """
    if is_masked(module):
        module.weight = module.weight_orig * module.weight_mask


def keep_fresh_on_load(module: nn.Module) -> None:
    """Have a masked layer recompute ``weight`` after every ``load_state_dict`` (registered once)."""
    if _refresh_masked_weight not in module._load_state_dict_post_hooks.values():
        module.register_load_state_dict_post_hook(_refresh_masked_weight)


def apply_magnitude_pruning(model: nn.Module, sparsities: Mapping[str, float], whole_layers: bool = False
                            ) -> dict[str, float]:
    """Prune each named layer's weight by absolute magnitude (``l1_unstructured``) to its sparsity.

    Exactly ``round(s * n)`` weights of a layer are masked. Layers at 0 get no mask. ``whole_layers``
    allows a sparsity of 1 (a layer pruned away, as one global threshold can do). Returns the achieved
    sparsity of every named layer.
    """
    check_layer_names(list(sparsities), model, "sparsities")
    modules = prunable_modules(model)
    achieved = {}
    for name, s in sparsities.items():
        s = 1.0 if whole_layers and s == 1 else check_sparsity(s, f"sparsities.{name}")
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
    """Give ``model`` identity masks where ``state_dict`` holds ``weight_orig`` + ``weight_mask``.

    A fresh model has plain ``weight`` parameters, so a masked state dict would not load; call
    this first (e.g. from ``LightningModule.on_load_checkpoint`` with ``prefix="model."``), then
    ``load_state_dict`` fills in the real masks.
    """
    restored = []
    for name, module in prunable_modules(model).items():
        if f"{prefix}{name}.weight_mask" in state_dict and not is_masked(module):
            prune.identity(module, "weight")
            keep_fresh_on_load(module)
            restored.append(name)
    return restored


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on masked models.

    A masked layer's ``weight`` is ``weight_orig * weight_mask`` computed with autograd, which
    deepcopy refuses; the copy gets it detached (the forward pre-hook recomputes it anyway).
    """
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
    """Give every unmasked conv/linear layer an all-ones ``torch.nn.utils.prune`` mask.

    With masks everywhere from the start, the parameter list (``weight_orig``) is the same before
    and after any pruning stage, so optimizer state saved in a checkpoint resumes in order, and
    later stages only overwrite the mask buffers.
    """
    added = []
    for name, module in prunable_modules(model).items():
        if not is_masked(module):
            prune.custom_from_mask(module, "weight", torch.ones_like(module.weight, dtype=torch.bool))
            keep_fresh_on_load(module)
            added.append(name)
    return added


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Apply keep-masks with ``torch.nn.utils.prune.custom_from_mask`` (or overwrite an existing mask).

    Overwriting keeps ``weight_orig`` the same parameter object, so the optimizer needs no rebuild.
    The caller keeps masks monotone (:func:`masks_from_scores` does).
    """
    modules = prunable_modules(model)
    unknown = sorted(set(masks) - set(modules))
    if unknown:
        raise ValueError(f"masks name unknown layer(s) {', '.join(unknown)}; layers are {', '.join(modules)}")
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


def mask_sparsity(masks: Masks, names: Sequence[str] | None = None) -> float:
    """Fraction of zeros over the given masks (all of them by default)."""
    names = list(masks) if names is None else names
    total = sum(masks[n].numel() for n in names)
    return sum(int((~masks[n].bool()).sum()) for n in names) / total if total else 0.0
