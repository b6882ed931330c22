"""Fine-grained magnitude pruning with ``torch.nn.utils.prune`` and the choice of per-layer sparsities.

Masks live as ``weight_orig`` + ``weight_mask`` so pruned weights stay exactly zero through
fine-tuning (the forward pass multiplies by the mask, whatever SGD does to ``weight_orig``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_prune.errors import ConfigError
from lightning_prune.pruning.layers import prunable_modules

Curves = Mapping[str, Sequence[float]]


def check_sparsity(value: float, option: str) -> float:
    """A sparsity must be in [0, 1): 1 would delete the layer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{option}: sparsity must be a number in [0, 1), got {value!r}")
    return float(value)


def check_layer_names(names: Sequence[str], model: nn.Module, option: str) -> None:
    """Unknown layer names fail with the list of valid ones."""
    valid = list(prunable_modules(model))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"{option}: unknown layer(s) {', '.join(unknown)}; prunable layers are {', '.join(valid)}")


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


def apply_magnitude_pruning(model: nn.Module, sparsities: Mapping[str, float]) -> dict[str, float]:
    """Prune each named layer's weight by absolute magnitude (``l1_unstructured``) to its sparsity.

    Exactly ``round(s * n)`` weights of a layer are masked. Layers at 0 get no mask. Returns the
    achieved sparsity of every named layer.
    """
    check_layer_names(list(sparsities), model, "sparsities")
    modules = prunable_modules(model)
    achieved = {}
    for name, s in sparsities.items():
        s = check_sparsity(s, f"sparsities.{name}")
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


def _sorted_curves(curves: Curves, levels: Sequence[float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Levels ascending with each curve reordered alike; level 0 is the unpruned accuracy."""
    order = np.argsort(levels)
    xs = np.asarray(levels, dtype=float)[order]
    if len(xs) == 0 or xs[0] != 0:
        raise ConfigError(f"sensitivity sparsities must include 0 (the unpruned accuracy), got {list(levels)}")
    ys = {}
    for name, accs in curves.items():
        if len(accs) != len(levels):
            raise ValueError(f"curve of {name} has {len(accs)} points for {len(levels)} levels")
        ys[name] = np.asarray(accs, dtype=float)[order]
    return xs, ys


def predicted_drop(curves: Curves, levels: Sequence[float], sparsities: Mapping[str, float]) -> float:
    """Sum of the per-layer accuracy drops read off the interpolated curves (points of top-1)."""
    xs, ys = _sorted_curves(curves, levels)
    return float(sum(y[0] - np.interp(sparsities.get(n, 0.0), xs, y) for n, y in ys.items()))


def choose_by_max_drop(
    curves: Curves, levels: Sequence[float], max_drop: float, step: float = 0.01
) -> dict[str, float]:
    """Per layer, the highest sparsity up to which the interpolated drop stays within ``max_drop`` points."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise ConfigError(f"max_drop: must be a number of top-1 points >= 0, got {max_drop!r}")
    xs, ys = _sorted_curves(curves, levels)
    grid = np.append(np.arange(0.0, xs[-1], step), xs[-1])
    chosen = {}
    for name, y in ys.items():
        over = np.flatnonzero(y[0] - np.interp(grid, xs, y) > max_drop + 1e-9)
        last = (over[0] - 1) if len(over) else len(grid) - 1
        chosen[name] = float(round(grid[max(last, 0)], 6))
    return chosen


def choose_for_target(
    curves: Curves,
    levels: Sequence[float],
    sizes: Mapping[str, int],
    target: float,
    step: float = 0.01,
) -> dict[str, float]:
    """Per-layer sparsities that remove ``target`` of all prunable weights at the least predicted loss.

    Greedy on the marginal cost: at each step, over all layers and all higher sparsities on a grid,
    take the move with the smallest predicted accuracy loss per removed weight (ties: the move that
    removes most), so large layers that tolerate pruning absorb most of the budget. A layer never
    goes past the highest swept level (no extrapolation); layers without a curve stay dense.
    """
    check_sparsity(target, "target_sparsity")
    xs, ys = _sorted_curves(curves, levels)
    unknown = [n for n in ys if n not in sizes]
    if unknown:
        raise ConfigError(
            f"sensitivity curves name unknown layer(s) {', '.join(unknown)}; layers are {', '.join(sizes)}"
        )
    total = sum(sizes.values())
    need = math.ceil(target * total - 1e-9)
    top = xs[-1]
    reachable = sum(round(top * sizes[n]) for n in ys)
    if reachable < need:
        raise ConfigError(
            f"target_sparsity={target} cannot be reached: the sweep stops at sparsity {top:g} per layer and covers "
            f"{sum(sizes[n] for n in ys):,} of {total:,} prunable weights, so at most {reachable / total:.4f} overall; "
            "lower target_sparsity or add higher levels to SensitivityScan.sparsities"
        )
    grid = np.unique(np.round(np.concatenate([np.arange(step, top, step), xs[1:]]), 6))
    drop = {n: y[0] - np.interp(grid, xs, y) for n, y in ys.items()}
    counts = {n: np.round(grid * sizes[n]).astype(np.int64) for n in ys}  # weights removed at each grid point
    state = dict.fromkeys(ys, (0.0, 0, 0.0))  # sparsity, removed, drop
    removed = 0
    while removed < need:
        best = None
        for name in ys:
            _, k, d = state[name]
            n = sizes[name]
            ok = counts[name] > k
            if not ok.any():
                continue
            ks, ds, ss = counts[name][ok], drop[name][ok], grid[ok]
            finish = removed - k + ks >= need
            if finish.any():  # stop at the first point that reaches the target, trimmed to the exact count
                i = int(np.argmax(finish))
                ks, ss = ks[: i + 1].copy(), ss[: i + 1].copy()
                ks[i] = k + need - removed
                ss[i] = ks[i] / n
                ds = np.interp(ss, xs, ys[name][0] - ys[name])
            gain = ks - k
            costs = (ds - d) / gain
            j = int(np.lexsort((-gain, costs))[0])
            key = (float(costs[j]), -int(gain[j]))
            if best is None or key < best[0]:
                best = (key, name, float(ss[j]), int(ks[j]), float(ds[j]))
        if best is None:  # cannot happen after the reachability check
            raise ConfigError(f"target_sparsity={target} cannot be reached with the swept levels")
        _, name, s, k, d = best
        removed += k - state[name][1]
        state[name] = (s, k, d)
    return {n: float(s) for n, (s, _, _) in state.items()}


def choose_sparsities(
    model: nn.Module,
    sparsities: Mapping[str, float] | None = None,
    target_sparsity: float | None = None,
    max_drop: float | None = None,
    curves: Curves | None = None,
    levels: Sequence[float] | None = None,
) -> dict[str, float]:
    """One of: an explicit ``{layer: sparsity}`` map, a ``target_sparsity`` or a ``max_drop`` rule."""
    given = [k for k, v in (("sparsities", sparsities), ("target_sparsity", target_sparsity), ("max_drop", max_drop))
             if v is not None]
    if len(given) != 1:
        raise ConfigError(
            f"set exactly one of sparsities, target_sparsity, max_drop (got {', '.join(given) or 'none'})"
        )
    if sparsities is not None:
        check_layer_names(list(sparsities), model, "sparsities")
        return {n: check_sparsity(s, f"sparsities.{n}") for n, s in sparsities.items()}
    if curves is None or levels is None:
        raise ConfigError(f"{given[0]} needs sensitivity curves (a SensitivityScan callback)")
    check_layer_names(list(curves), model, "sensitivity curves")
    if target_sparsity is not None:
        return choose_for_target(curves, levels, layer_sizes(model), target_sparsity)
    return choose_by_max_drop(curves, levels, max_drop)
