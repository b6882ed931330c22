"""GraSP (Wang et al., ICLR 2020: ``-theta * Hg``, remove the highest) and SNIP (Lee et al., ICLR 2019:
``|g * theta|``, remove the lowest) saliency scores on a copy of the model, and global masks from them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.names import REMOVES
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import Masks, copy_model, current_masks, is_masked, make_permanent

Batch = tuple[torch.Tensor, torch.Tensor]


def _scoring_copy(model: nn.Module, masks: Masks | None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A plain copy whose weights carry every mask; BatchNorm in training mode (as the authors' code runs it),
    dropout off (or the gradient and Hessian passes would see two different networks)."""
    net = make_permanent(copy_model(model))
    net.train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    modules = prunable_modules(net)
    assert set(masks or {}) <= set(modules), "masks of unknown layers"
    weights = {}
    with torch.no_grad():
        for name, module in modules.items():
            if masks is not None and name in masks:
                module.weight.mul_(masks[name].to(module.weight.device, module.weight.dtype))
            weights[name] = module.weight
    for p in net.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    return net, weights


def _loss(net: nn.Module, batch: Batch, temperature: float, device: torch.device) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(net(x.to(device)) / temperature, y.to(device))


def _batches(batches: Iterable[Batch]) -> list[Batch]:
    batches = list(batches)
    if not batches:
        raise ValueError("saliency scores need at least one calibration batch")
    return batches


def _gradient(net: nn.Module, weights: dict[str, torch.Tensor], batches: list[Batch], temperature: float,
              keep_images: int = 0) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, ...] | None]]:
    """g summed over the batches, and each batch's gradient with its autograd graph while ``keep_images`` last."""
    device = next(iter(weights.values())).device
    params = list(weights.values())
    g = [torch.zeros_like(p) for p in params]
    kept: list[tuple[torch.Tensor, ...] | None] = []
    room = keep_images
    for batch in batches:
        keep = room > 0 and len(batch[1]) <= room
        room -= len(batch[1]) if keep else 0
        grads = torch.autograd.grad(_loss(net, batch, temperature, device), params, create_graph=keep)
        for acc, grad in zip(g, grads):
            acc += grad.detach()
        kept.append(grads if keep else None)
    return g, kept


def gradient(
    model: nn.Module, batches: Iterable[Batch], temperature: float = 1.0, masks: Masks | None = None
) -> dict[str, torch.Tensor]:
    """g: gradient of the cross-entropy of logits / T w.r.t. each conv/linear weight, summed over batches."""
    net, weights = _scoring_copy(model, masks)
    return dict(zip(weights, _gradient(net, weights, _batches(batches), temperature)[0]))


def gradient_and_hg(
    model: nn.Module,
    batches: Iterable[Batch],
    temperature: float = 200.0,
    masks: Masks | None = None,
    keep_images: int = 256,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(g, Hg) on the masked network as GraSP's Algorithm 1: g summed over all batches, then Hg batch by batch.

    The first pass's graphs of up to ``keep_images`` images are reused (~4 MB per image at full width).
    """
    batches = _batches(batches)
    net, weights = _scoring_copy(model, masks)
    device = next(iter(weights.values())).device
    params = list(weights.values())
    g, kept = _gradient(net, weights, batches, temperature, keep_images)
    hg = [torch.zeros_like(p) for p in params]
    for i, batch in enumerate(batches):
        grads, kept[i] = kept[i], None  # free each graph once used
        if grads is None:
            grads = torch.autograd.grad(_loss(net, batch, temperature, device), params, create_graph=True)
        z = sum((gi * grad).sum() for gi, grad in zip(g, grads))
        del grads
        for acc, h in zip(hg, torch.autograd.grad(z, params, allow_unused=True)):
            if h is not None:
                acc += h
    return dict(zip(weights, g)), dict(zip(weights, hg))


def grasp_scores(
    model: nn.Module, batches: Iterable[Batch], temperature: float = 200.0, masks: Masks | None = None
) -> dict[str, torch.Tensor]:
    """GraSP saliency ``S = -theta * Hg`` per conv/linear weight (remove the HIGHEST; pruned ones score 0)."""
    _, hg = gradient_and_hg(model, batches, temperature, masks)
    theta = _masked_weights(model, masks)
    return {name: -(theta[name] * h).detach() for name, h in hg.items()}


def snip_scores(model: nn.Module, batches: Iterable[Batch], masks: Masks | None = None) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity ``|g * theta|`` per conv/linear weight (remove the LOWEST)."""
    g = gradient(model, batches, 1.0, masks)
    theta = _masked_weights(model, masks)
    return {name: (theta[name] * gi).abs().detach() for name, gi in g.items()}


def _masked_weights(model: nn.Module, masks: Masks | None) -> dict[str, torch.Tensor]:
    """The weights the forward pass uses, times ``masks`` where given."""
    out = {}
    for name, module in prunable_modules(model).items():
        w = (module.weight_orig * module.weight_mask if is_masked(module) else module.weight).detach()
        if masks is not None and name in masks:
            w = w * masks[name].to(w.device, w.dtype)
        out[name] = w
    return out


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    remove: Literal["highest", "lowest"] = "highest",
    masks: Masks | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks removing exactly ``round(sparsity * N)`` of the N scored weights by one global threshold;
    weights already pruned in ``masks`` go first whatever their score (they never come back)."""
    assert 0 <= sparsity < 1 and remove in ("highest", "lowest"), (sparsity, remove)
    names = list(scores)
    assert set(masks or {}) <= set(names), "masks of layers without scores"
    flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in names])
    if not torch.isfinite(flat).all():
        raise ValueError("saliency scores contain NaN or infinity (diverged training?)")
    key = flat if remove == "highest" else -flat
    pruned = torch.cat([
        (~masks[n].bool()).flatten().cpu() if masks is not None and n in masks
        else torch.zeros(scores[n].numel(), dtype=torch.bool)
        for n in names
    ])
    k = round(sparsity * flat.numel())
    already = int(pruned.sum())
    if k < already:
        raise ValueError(f"sparsity {sparsity} removes {k} weights but {already} are already pruned")
    key[pruned] = float("inf")
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(key, descending=True, stable=True)[:k]] = False
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start : start + size].view(scores[n].shape).to(scores[n].device)
        start += size
    return out


def split_batch(batch: Batch, chunks: int) -> list[Batch]:
    """One calibration batch as ``chunks`` roughly equal pieces (the authors' code uses two halves)."""
    x, y = batch
    chunks = max(1, min(int(chunks), len(y)))
    return list(zip(x.chunk(chunks), y.chunk(chunks)))


def stage_diagnostics(
    weights: Mapping[str, torch.Tensor],
    before: Masks,
    after: Masks,
    scores: Mapping[str, torch.Tensor] | None,
    top_fraction: float = 0.1,
) -> dict[str, float | None]:
    """What one pruning stage did: the share of the ``top_fraction`` largest kept weights it removed, and
    how much scores cancel within conv filters (``filter_sum_ratio`` near 0; None without ``scores``)."""
    names = [n for n in (weights if scores is None else scores) if n in weights]
    kept = torch.cat([before[n].flatten().bool().cpu() for n in names])
    magnitude = torch.cat([weights[n].detach().abs().flatten().double().cpu() for n in names])
    removed = torch.cat([(before[n].bool() & ~after[n].bool()).flatten().cpu() for n in names])
    candidates = magnitude[kept]
    k = max(1, round(top_fraction * candidates.numel()))
    threshold = torch.topk(candidates, k).values.min()
    top = kept & (magnitude >= threshold)
    sums, absolute = [], []
    for n in names if scores is not None else []:
        s = scores[n].detach().double().cpu()
        if s.dim() == 4:  # conv: one row per output filter
            rows = s.flatten(1)
            sums.append(rows.sum(1))
            absolute.append(rows.abs().sum(1))
    filter_sums = torch.cat(sums) if sums else torch.zeros(1, dtype=torch.float64)
    filter_abs = torch.cat(absolute) if absolute else torch.ones(1, dtype=torch.float64)
    return {
        "top_removed": float(removed[top].double().mean()) if top.any() else 0.0,
        "removed": float(removed[kept].double().mean()) if kept.any() else 0.0,
        "filter_sum_ratio": None if scores is None else float(filter_sums.abs().sum() / filter_abs.sum().clamp_min(
            1e-300)),
        "filter_sum_mean": None if scores is None else float(filter_sums.mean()),
    }


def prune_by_saliency(
    model: nn.Module, batches: Iterable[Batch], method: str, sparsity: float, temperature: float = 200.0,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Score the (masked) network and mask it further to ``sparsity`` overall: CPU masks and diagnostics.

    ``grasp_abs`` removes the lowest ``|theta * Hg|``. ``model`` is not modified.
    """
    assert method in REMOVES, f"method must be one of {', '.join(REMOVES)}, got {method!r}"
    masks = current_masks(model)
    batches = list(batches)
    if method == "snip":
        scores = snip_scores(model, batches, masks)
    else:
        scores = grasp_scores(model, batches, temperature, masks)
        if method == "grasp_abs":
            scores = {name: s.abs() for name, s in scores.items()}
    new = masks_from_scores(scores, sparsity, REMOVES[method], masks)
    weights = {name: m.weight_orig if is_masked(m) else m.weight for name, m in prunable_modules(model).items()}
    diagnostics = stage_diagnostics(weights, masks, new, scores)
    return {name: mask.cpu() for name, mask in new.items()}, diagnostics
