"""Layer-by-layer sensitivity sweep: top-1 with one layer magnitude-pruned at a time.

Pruning layer ``l`` changes nothing upstream of it, so each batch runs the network once, keeps the
activations entering every scanned layer, and for each (layer, level) re-runs only the suffix from
that layer on. Level 0 is the unpruned network, measured once for all layers. The model itself is
never modified: the masked weight is passed to the layer's functional form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from lightning_prune.pruning.layers import effective_weight, prunable_modules
from lightning_prune.pruning.unstructured import check_layer_names, check_sparsity, is_masked

DEFAULT_SPARSITIES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.5, 0.7, 0.8, 0.9)
CPU_PASS_MB = 8.0  # largest activation of one pass on the CPU: beyond the caches, more images run slower each
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# progress(done, total, layer, sparsity): called after every (batch, layer, level) step.
Progress = Callable[[int, int | None, str, float], None]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The mask ``prune.l1_unstructured`` would give ``weight`` at ``sparsity`` (same ties, same count)."""
    return prune.L1Unstructured(amount=sparsity).compute_mask(weight, torch.ones_like(weight))


def magnitude_masks(weight: torch.Tensor, sparsities: Sequence[float]) -> list[torch.Tensor]:
    """:func:`magnitude_mask` at every level, from one partial sort of ``|weight|`` instead of a top-k per level.

    ``l1_unstructured`` removes the k = round(s n) smallest magnitudes. Where the k-th and (k+1)-th
    smallest differ, those are exactly the weights <= the k-th, so a comparison gives the same mask;
    where they tie, which of the tied weights top-k drops is its own choice, and that level falls
    back to :func:`magnitude_mask`.
    """
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


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network as one flat list: ``features`` children, flatten, ``classifier`` children."""
    if not (isinstance(getattr(model, "features", None), nn.Sequential)
            and isinstance(getattr(model, "classifier", None), nn.Sequential)):
        raise TypeError("sensitivity_scan needs a VGG-style model: features (Sequential) -> flatten -> classifier")
    return (
        [(f"features.{n}", m) for n, m in model.features.named_children()]
        + [("flatten", nn.Flatten(1))]
        + [(f"classifier.{n}", m) for n, m in model.classifier.named_children()]
    )


def _run(flat: list[tuple[str, nn.Module]], x: torch.Tensor) -> torch.Tensor:
    for _, stage in flat:
        x = stage(x)
    return x


def _stage_sizes(flat: list[tuple[str, nn.Module]], x: torch.Tensor) -> list[int]:
    """Bytes of every stage's output for one image (``x`` holds one)."""
    sizes = []
    for _, stage in flat:
        x = stage(x)
        sizes.append(x[0].numel() * x.element_size())
    return sizes


def _layer_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with another weight, leaving the module untouched."""
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, module.bias)
    return F.linear(x, weight, module.bias)


def _tqdm_progress(total: int | None) -> tuple[Progress, Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="sensitivity", unit="step", dynamic_ncols=True)

    def update(done: int, total: int | None, layer: str, sparsity: float) -> None:
        bar.set_postfix_str(f"layer {layer} sparsity {sparsity:g}", refresh=False)
        bar.update(done - bar.n)

    return update, bar.close


def _resolve(model: nn.Module, sparsities: Sequence[float], layers: Sequence[str] | None) -> list[str]:
    for s in sparsities:
        check_sparsity(s, "sparsities")
    names = list(prunable_modules(model)) if layers is None else list(layers)
    check_layer_names(names, model, "layers")
    return names


def _count(batches: Batches, max_batches: int | None) -> int | None:
    try:
        n = len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
    return n if max_batches is None else min(n, max_batches)


@torch.inference_mode()
def sensitivity_scan(
    model: nn.Module,
    dataloader: Batches,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: Sequence[str] | None = None,
    progress: Progress | bool | None = None,
    max_batches: int | None = None,
    max_images: int = 2048,
    shard: tuple[int, int] = (0, 1),
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_pass_mb: float | None = None,
) -> dict[str, list[float]]:
    """Top-1 (%) per layer and sparsity, pruning one layer at a time by absolute magnitude.

    ``shard=(rank, world)`` evaluates every ``world``-th batch only, starting at ``rank``, and
    ``reduce`` sums the correct-prediction counts over the shards (an all-reduce under DDP): the
    curves equal the unsharded ones, and N processes sweep about N times faster.

    ``layers`` defaults to every conv and linear layer. ``progress``: True for a tqdm bar, or a
    callable ``(done, total, layer, sparsity)``. Levels of one layer run stacked along the batch,
    at most ``max_images`` images per pass (memory grows with it). The model is evaluated in eval
    mode and comes back exactly as it was (weights, masks and train/eval mode).

    ``max_pass_mb`` also bounds each pass by the size of the activation it starts from: batches
    are cut into pieces whose largest activation stays within it, and levels are stacked only while
    the stacked output of the swept layer does. On a CPU a convolution over more images than fit
    in cache runs slower per image (full-width VGG16-BN: 3.0 ms per image in passes of 32, 4.2 in
    passes of 768), so the default (None) is 8 MB there; on CUDA, where larger passes are faster,
    only ``max_images`` applies.
    """
    names = _resolve(model, sparsities, layers)
    flat = stages(model)
    modules = prunable_modules(model)
    index = {id(m): i for i, (_, m) in enumerate(flat)}
    at = sorted((index[id(modules[n])], n) for n in names)  # stage index of each scanned layer
    needed = {i for i, _ in at}
    masked = {}  # masked weights, computed once; None where the level prunes nothing
    for n in names:
        w = effective_weight(modules[n])
        masked[n] = [w * m if s > 0 else None for s, m in zip(sparsities, magnitude_masks(w, sparsities))]
    device = next(model.parameters()).device
    pairs = sum(w is not None for ws in masked.values() for w in ws)
    n_batches = _count(dataloader, max_batches)
    total = None if n_batches is None else n_batches * pairs
    close: Callable[[], None] = lambda: None  # noqa: E731
    if progress is True:
        progress, close = _tqdm_progress(total)
    correct = {n: [0] * len(sparsities) for n in names}
    base, seen, done = 0, 0, 0
    rank, world = shard
    if max_pass_mb is None and device.type == "cpu":
        max_pass_mb = CPU_PASS_MB
    limit = None if max_pass_mb is None else max_pass_mb * 1e6
    sizes: list[int] | None = None  # bytes of each stage's output for one image
    was_training = model.training
    model.eval()
    try:
        for b, (xb, yb) in enumerate(dataloader):
            if max_batches is not None and b >= max_batches:
                break
            if b % world != rank:
                continue
            xb, yb = xb.to(device), yb.to(device)
            if sizes is None:
                sizes = _stage_sizes(flat, xb[:1])
                if not torch.allclose(_run(flat, xb[:2]), model(xb[:2]), rtol=1e-4, atol=1e-5):
                    raise TypeError("the model's forward is not features -> flatten -> classifier")
            rows = len(yb) if limit is None else max(1, min(len(yb), int(limit // max(sizes))))
            pieces = [(xb[a : a + rows], yb[a : a + rows]) for a in range(0, len(yb), rows)]
            cached, hits = [], 0
            for x, y in pieces:  # the unpruned pass, keeping the input of every swept layer
                inputs, h = {}, x
                for i, (_, stage) in enumerate(flat):
                    if i in needed:
                        inputs[i] = h
                    h = stage(h)
                hits += int((h.argmax(1) == y).sum())
                cached.append(inputs)
            base += hits
            seen += len(yb)
            for i, name in at:
                todo = []
                for j, w in enumerate(masked[name]):
                    if w is None:
                        correct[name][j] += hits
                    else:
                        todo.append(j)
                cap = max_images if limit is None else max(1, min(max_images, int(limit // sizes[i])))
                group = max(1, cap // rows)
                for start in range(0, len(todo), group):
                    js = todo[start : start + group]
                    for (_, y), inputs in zip(pieces, cached):
                        # several levels stacked along the batch: one suffix pass, larger kernels
                        out = torch.cat([_layer_forward(flat[i][1], inputs[i], masked[name][j]) for j in js])
                        for _, stage in flat[i + 1 :]:
                            out = stage(out)
                        hits_per_level = (out.argmax(1).view(len(js), -1) == y).sum(1).tolist()
                        for j, h_j in zip(js, hits_per_level):
                            correct[name][j] += int(h_j)
                    done += len(js)
                    if progress:
                        progress(done, total, name, sparsities[js[-1]])
            del cached
    finally:
        model.train(was_training)
        close()
    counts = torch.tensor([[seen, *correct[n]] for n in names], dtype=torch.float64)
    if reduce is not None:
        counts = reduce(counts)
    seen = int(counts[0, 0]) if len(names) else seen
    if seen == 0:
        raise ValueError("sensitivity_scan got an empty dataloader")
    return {n: [100.0 * float(c) / seen for c in counts[i, 1:]] for i, n in enumerate(names)}


@torch.no_grad()
def naive_sensitivity_scan(
    model: nn.Module,
    dataloader: Batches,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: Sequence[str] | None = None,
    max_batches: int | None = None,
) -> dict[str, list[float]]:
    """The reference: for every (layer, level) prune the layer with ``l1_unstructured`` and evaluate the whole net.

    The layer is pruned in place and its weight restored afterwards: no copies, only forward passes are timed.
    """
    names = _resolve(model, sparsities, layers)
    modules = prunable_modules(model)
    if any(is_masked(modules[n]) for n in names):
        raise ValueError("naive_sensitivity_scan expects layers without pruning masks")
    device = next(model.parameters()).device
    batches = []
    for b, (x, y) in enumerate(dataloader):
        if max_batches is not None and b >= max_batches:
            break
        batches.append((x.to(device), y.to(device)))
    was_training = model.training
    model.eval()
    result: dict[str, list[float]] = {}
    try:
        for name in names:
            module, result[name] = modules[name], []
            original = module.weight.detach().clone()
            for s in sparsities:
                if s > 0:
                    prune.l1_unstructured(module, "weight", amount=s)
                hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
                if s > 0:
                    prune.remove(module, "weight")
                    module.weight.data = original.clone()
                result[name].append(100.0 * hits / sum(len(y) for _, y in batches))
    finally:
        model.train(was_training)
    return result
