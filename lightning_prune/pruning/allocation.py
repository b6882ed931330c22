"""How a global sparsity target is split over the layers (task 1a): the per-layer sparsities to prune to.

``sensitivity``: at the least loss the sensitivity curves predict (or within ``max_drop`` points); its
controls ``global`` (one magnitude threshold) and ``uniform`` (every layer at the target) need no sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import layer_sizes

Curves = Mapping[str, Sequence[float]]
MIN_KEPT_SHARE = 0.01  # the least share of its weights any layer keeps (see layer_floors)


def _sorted_curves(curves: Curves, levels: Sequence[float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Levels ascending with each curve reordered alike; level 0 is the unpruned accuracy."""
    order = np.argsort(levels)
    xs = np.asarray(levels, dtype=float)[order]
    if len(xs) == 0 or xs[0] != 0:
        raise ValueError(f"sensitivity sparsities must include 0 (the unpruned accuracy), got {list(levels)}")
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
    curves: Curves, levels: Sequence[float], max_drop: float, step: float = 0.01,
    caps: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per layer, the highest sparsity up to which the interpolated drop stays within ``max_drop`` points
    (and at most the layer's ``caps`` entry: the sparsity that keeps its floor)."""
    assert max_drop >= 0, f"max_drop must be >= 0, got {max_drop!r}"
    xs, ys = _sorted_curves(curves, levels)
    grid = np.append(np.arange(0.0, xs[-1], step), xs[-1])
    chosen = {}
    for name, y in ys.items():
        over = np.flatnonzero(y[0] - np.interp(grid, xs, y) > max_drop + 1e-9)
        last = (over[0] - 1) if len(over) else len(grid) - 1
        chosen[name] = min(float(round(grid[max(last, 0)], 6)), (caps or {}).get(name, 1.0))
    return chosen


def check_reachable(target: float, top: float, sizes: Mapping[str, int], layers: Sequence[str],
                    caps: Mapping[str, float] | None = None) -> int:
    """Weights to remove for ``target``; ValueError when layers swept up to ``top`` (and each kept at its
    ``caps`` sparsity at most) cannot give that many."""
    total = sum(sizes.values())
    need = math.ceil(target * total - 1e-9)
    reachable = sum(round(min(top, (caps or {}).get(n, 1.0)) * sizes[n]) for n in layers)
    if reachable < need:
        floors = ", each layer keeping its floor (1 % of its weights and one per output)," if caps else ""
        raise ValueError(
            f"target_sparsity={target} cannot be reached: the sweep stops at sparsity {top:g} per layer{floors} and "
            f"covers {sum(sizes[n] for n in layers):,} of {total:,} prunable weights, so at most "
            f"{reachable / total:.4f} overall; lower the target or sweep higher sparsity levels"
        )
    return need


Move = tuple[tuple[float, int], float, int, float]  # (cost per weight, -weights), sparsity, removed, drop


def _cheapest_move(k: int, d: float, removed: int, need: int, n: int, ks: np.ndarray, ds: np.ndarray,
                   ss: np.ndarray, xs: np.ndarray, y: np.ndarray) -> Move | None:
    """One layer's cheapest step up its grid from ``k`` removed at drop ``d``, trimmed to reach ``need``."""
    ok = ks > k
    if not ok.any():
        return None
    ks, ds, ss = ks[ok], ds[ok], ss[ok]
    finish = removed - k + ks >= need
    if finish.any():  # stop at the first point that reaches the target, trimmed to the exact count
        i = int(np.argmax(finish))
        ks, ss = ks[: i + 1].copy(), ss[: i + 1].copy()
        ks[i] = k + need - removed
        ss[i] = ks[i] / n
        ds = np.interp(ss, xs, y[0] - y)
    gain = ks - k
    costs = (ds - d) / gain
    j = int(np.lexsort((-gain, costs))[0])
    return (float(costs[j]), -int(gain[j])), float(ss[j]), int(ks[j]), float(ds[j])


def choose_for_target(
    curves: Curves,
    levels: Sequence[float],
    sizes: Mapping[str, int],
    target: float,
    step: float = 0.01,
    caps: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-layer sparsities that remove ``target`` of all prunable weights at the least predicted loss.

    Greedy: each step takes the move of least predicted loss per removed weight (ties: the larger move),
    up to the highest swept level and each layer's ``caps``; layers without a curve stay dense.
    """
    xs, ys = _sorted_curves(curves, levels)
    assert 0 <= target < 1 and set(ys) <= set(sizes), "a target in [0, 1) and curves of known layers"
    top = xs[-1]
    need = check_reachable(target, top, sizes, list(ys), caps)
    grid = np.unique(np.round(np.concatenate([np.arange(step, top, step), xs[1:]]), 6))
    grids = {n: np.unique(np.minimum(grid, (caps or {}).get(n, 1.0))) for n in ys}  # up to each layer's floor
    drop = {n: y[0] - np.interp(grids[n], xs, y) for n, y in ys.items()}
    counts = {n: np.round(grids[n] * sizes[n]).astype(np.int64) for n in ys}  # weights removed at each grid point
    state = dict.fromkeys(ys, (0.0, 0, 0.0))  # sparsity, removed, drop
    removed = 0
    while removed < need:
        moves = [(move, name) for name in ys if (move := _cheapest_move(
            state[name][1], state[name][2], removed, need, sizes[name], counts[name], drop[name], grids[name], xs,
            ys[name])) is not None]
        assert moves, "the reachability check guarantees a move"
        (_, s, k, d), name = min(moves, key=lambda m: m[0][0])
        removed += k - state[name][1]
        state[name] = (s, k, d)
    return {n: float(s) for n, (s, _, _) in state.items()}


def layer_floors(model: nn.Module) -> dict[str, int]:
    """The fewest weights each prunable layer keeps: ``MIN_KEPT_SHARE`` of them and one per output."""
    return {name: min(m.weight.numel(), max(math.ceil(MIN_KEPT_SHARE * m.weight.numel()), m.weight.shape[0]))
            for name, m in prunable_modules(model).items()}


def sparsity_caps(floors: Mapping[str, int], sizes: Mapping[str, int]) -> dict[str, float]:
    """The highest sparsity of each layer that keeps its floor."""
    return {name: (sizes[name] - floors[name]) / sizes[name] for name in sizes}


def check_floors(chosen: Mapping[str, float], floors: Mapping[str, int], sizes: Mapping[str, int],
                 option: str) -> dict[str, float]:
    """``chosen`` unchanged, or ValueError naming the first layer it would leave with fewer than its floor."""
    for name, s in chosen.items():
        kept = sizes[name] - round(s * sizes[name])
        if kept < floors[name]:
            raise ValueError(
                f"{option}: {name} at sparsity {s:g} would keep {kept} of its {sizes[name]:,} weights, under its "
                f"floor of {floors[name]} (1 % of them and one per output); at most "
                f"{sparsity_caps(floors, sizes)[name]:.4f} there, so lower the target")
    return dict(chosen)


def choose_global(model: nn.Module, target: float) -> dict[str, float]:
    """Per-layer sparsities of one magnitude threshold removing ``round(target * N)`` weights, as
    ``global_unstructured`` (ties by layer order), except that no layer goes under its floor."""
    floors = layer_floors(model)
    weights = {name: m.weight.detach().abs().flatten().double().cpu() for name, m in prunable_modules(model).items()}
    for name, w in weights.items():
        w[torch.topk(w, floors[name]).indices] = math.inf  # kept whatever the threshold
    flat = torch.cat(list(weights.values()))
    need, spare = round(target * flat.numel()), flat.numel() - sum(floors.values())
    if need > spare:
        raise ValueError(f"target_sparsity={target}: every layer keeps its floor (1 % of its weights and one per "
                         f"output, {sum(floors.values()):,} in all), so one threshold reaches at most "
                         f"{spare / flat.numel():.4f}; lower the target")
    removed = torch.zeros_like(flat, dtype=torch.bool)
    removed[torch.argsort(flat, stable=True)[:need]] = True
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = int(removed[start : start + w.numel()].sum()) / w.numel()
        start += w.numel()
    return out


def choose_uniform(model: nn.Module, target: float) -> dict[str, float]:
    """Every prunable layer at ``target``; refused when that leaves a layer under its floor."""
    chosen = dict.fromkeys(prunable_modules(model), float(target))
    return check_floors(chosen, layer_floors(model), layer_sizes(model), f"target_sparsity={target}")


def choose_sparsities(
    model: nn.Module,
    sparsities: Mapping[str, float] | None = None,
    target_sparsity: float | None = None,
    max_drop: float | None = None,
    curves: Curves | None = None,
    levels: Sequence[float] | None = None,
) -> dict[str, float]:
    """One of: an explicit ``{layer: sparsity}`` map, a ``target_sparsity`` or a ``max_drop`` rule.

    The options are checked in the callback; what only the choice shows (floors, reach) is refused here.
    """
    assert [sparsities, target_sparsity, max_drop].count(None) == 2, "exactly one of sparsities, target, max_drop"
    if sparsities is not None:
        chosen = {n: float(s) for n, s in sparsities.items()}
        return check_floors(chosen, layer_floors(model), layer_sizes(model), "sparsities")
    assert curves is not None and levels is not None, f"{'max_drop' if max_drop is not None else 'target'} needs curves"
    caps = sparsity_caps(layer_floors(model), layer_sizes(model))
    if target_sparsity is not None:
        return choose_for_target(curves, levels, layer_sizes(model), target_sparsity, caps=caps)
    return choose_by_max_drop(curves, levels, max_drop, caps=caps)
