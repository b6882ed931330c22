"""The layer-wise shuffle control (Frankle et al., ICLR 2021): another method's per-layer sparsities, random masks.

If random masks at a criterion's per-layer sparsities train as well as its own masks, its value lies in
its allocation over the layers, not in which weights of a layer it keeps. No Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lightning_prune.pruning.unstructured import Masks


def layer_sparsities(masks: Masks) -> dict[str, float]:
    """Each layer's share of zeros in its keep-mask."""
    return {name: 1 - float(mask.float().mean()) for name, mask in masks.items()}


def random_masks(masks: Masks, sparsities: Mapping[str, float], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Keep-masks that bring each layer to its sparsity, the added zeros drawn uniformly among its kept
    weights; weights already pruned in ``masks`` stay pruned (and count towards it)."""
    unknown = sorted(set(sparsities) - set(masks))
    if unknown:
        raise ValueError(f"sparsities name layer(s) without a mask: {', '.join(unknown)}")
    out = {}
    for name, mask in masks.items():
        keep = mask.detach().bool().flatten().cpu().clone()
        need = round(sparsities.get(name, 0.0) * keep.numel()) - int((~keep).sum())
        if need < 0:
            already = 1 - float(keep.float().mean())
            raise ValueError(f"{name}: sparsity {sparsities[name]:.4f} is below the {already:.4f} already pruned")
        kept = keep.nonzero().squeeze(1)
        keep[kept[torch.randperm(len(kept), generator=generator)[:need]]] = False
        out[name] = keep.view(mask.shape)
    return out


def plan_from_checkpoint(checkpoint: dict[str, Any], stages: int) -> list[dict[str, float]]:
    """Per stage, the per-layer sparsities a pruned run reached: its recorded stages, or its final masks for one stage.

    A staged copy needs a run of as many ``stages``; a one-shot copy takes the run's final sparsities.
    """
    events = next((state.get("events") for key, state in (checkpoint.get("callbacks") or {}).items()
                   if key.startswith("StagedPruning") and isinstance(state, dict)), None) or []
    per_stage = [e["layers"] for e in events if isinstance(e, dict) and isinstance(e.get("layers"), dict)]
    if len(per_stage) == stages:
        return per_stage
    if stages == 1:
        final = {key.removeprefix("model.").removesuffix(".weight_mask"): 1 - float(value.float().mean())
                 for key, value in (checkpoint.get("state_dict") or {}).items() if key.endswith("weight_mask")}
        if final:
            return [final]
        raise ValueError("the checkpoint holds no pruning masks to copy per-layer sparsities from")
    raise ValueError(f"the run recorded the per-layer sparsities of {len(per_stage)} stages, not {stages}; copy a "
                     "run of the same schedule")


COPYABLE_TASKS = ("grasp", "snip")  # 1b runs: pruned while training from random weights, as the shuffle is


def check_copyable(checkpoint: dict[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """ValueError unless the run a shuffle copies is a 1b run whose layers have this model's shapes (other
    widths give other layer sizes, so the copied sparsities would reach another overall sparsity)."""
    pruning = checkpoint.get("pruning") or {}
    task = pruning.get("task")
    if task not in COPYABLE_TASKS:
        raise ValueError(f"the run was pruned by task {task!r} (method {pruning.get('method')!r}); the layer-wise "
                         f"shuffle copies a run of task {' or '.join(map(repr, COPYABLE_TASKS))}, trained from random "
                         "weights as this one is")
    state = checkpoint.get("state_dict") or {}
    for name, shape in shapes.items():
        theirs = next((state[f"model.{name}.{k}"] for k in ("weight_mask", "weight_orig", "weight")
                       if f"model.{name}.{k}" in state), None)
        if theirs is not None and tuple(theirs.shape) != tuple(shape):
            raise ValueError(f"its {name} has shape {tuple(theirs.shape)} but this model's has {tuple(shape)}; copy a "
                             "run of the same widths (model.channels / model.width_multiplier)")
