"""Layer-by-layer sensitivity sweep: top-1 with one layer magnitude-pruned at a time.

Pruning layer ``l`` changes nothing upstream of it, so each batch keeps the activations entering every
scanned layer and each (layer, level) re-runs only the suffix from there; the model is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.pruning.layers import dense, prunable_modules
from lightning_prune.pruning.unstructured import magnitude_masks

DEFAULT_SPARSITIES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.5, 0.7, 0.8, 0.9)
CPU_PASS_MB = 8.0  # largest activation of one pass on the CPU: beyond the caches, more images run slower each
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# progress(done, total, layer, sparsity): called after every (batch, layer, level) step.
Progress = Callable[[int, int | None, str, float], None]


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


def _run(flat: list[tuple[str, nn.Module]], x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The flat network's output on ``x``, and the bytes of every stage's output for one image."""
    sizes = []
    for _, stage in flat:
        x = stage(x)
        sizes.append(x[0].numel() * x.element_size())
    return x, sizes


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
    """The swept layers (default: every conv and linear); their names and the levels are checked where parsed."""
    names = list(prunable_modules(model)) if layers is None else list(layers)
    assert all(0 <= s < 1 for s in sparsities) and set(names) <= set(prunable_modules(model)), (sparsities, names)
    return names


def _count(batches: Batches, max_batches: int | None) -> int | None:
    try:
        n = len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
    return n if max_batches is None else min(n, max_batches)


def _masked_levels(modules: dict[str, nn.Module], names: Sequence[str], sparsities: Sequence[float]
                   ) -> dict[str, list[torch.Tensor | None]]:
    """Each swept layer's masked weight at every level, computed once; None where the level prunes nothing."""
    masked = {}
    for n in names:
        w = dense(modules[n].weight)
        masked[n] = [w * m if s > 0 else None for s, m in zip(sparsities, magnitude_masks(w, sparsities))]
    return masked


def _unpruned_pass(flat: list[tuple[str, nn.Module]], needed: set[int], pieces: list[tuple[torch.Tensor, torch.Tensor]]
                   ) -> tuple[list[dict[int, torch.Tensor]], int]:
    """Top-1 hits of the unpruned network on the pieces, keeping the input of every swept layer."""
    cached, hits = [], 0
    for x, y in pieces:
        inputs, h = {}, x
        for i, (_, stage) in enumerate(flat):
            if i in needed:
                inputs[i] = h
            h = stage(h)
        hits += int((h.argmax(1) == y).sum())
        cached.append(inputs)
    return cached, hits


def _suffix_hits(flat: list[tuple[str, nn.Module]], i: int, weights: list[torch.Tensor],
                 pieces: list[tuple[torch.Tensor, torch.Tensor]], cached: list[dict[int, torch.Tensor]]) -> list[int]:
    """Top-1 hits with stage ``i`` at each of ``weights``, the levels stacked along the batch: one suffix pass."""
    hits = [0] * len(weights)
    for (_, y), inputs in zip(pieces, cached):
        out = torch.cat([_layer_forward(flat[i][1], inputs[i], w) for w in weights])
        for _, stage in flat[i + 1 :]:
            out = stage(out)
        for j, h in enumerate((out.argmax(1).view(len(weights), -1) == y).sum(1).tolist()):
            hits[j] += int(h)
    return hits


@dataclass
class _Sweep:
    """One sweep's fixed plan (stages, swept layers, masked weights, pass bounds) and its counts so far."""

    flat: list[tuple[str, nn.Module]]
    at: list[tuple[int, str]]  # stage index and name of each swept layer, in network order
    masked: dict[str, list[torch.Tensor | None]]
    sparsities: Sequence[float]
    max_images: int
    limit: float | None  # bytes of the activation one pass may start from; None: no bound
    progress: Progress | None
    total: int | None
    correct: dict[str, list[int]]
    seen: int = 0
    done: int = 0
    sizes: list[int] | None = None  # bytes of each stage's output for one image

    def batch(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """One batch: the unpruned pass once, then every (layer, level), cut into pieces within the bound."""
        if self.sizes is None:
            out, self.sizes = _run(self.flat, xb[:2])
            if not torch.allclose(out, model(xb[:2]), rtol=1e-4, atol=1e-5):
                raise TypeError("the model's forward is not features -> flatten -> classifier")
        rows = len(yb) if self.limit is None else max(1, min(len(yb), int(self.limit // max(self.sizes))))
        pieces = [(xb[a : a + rows], yb[a : a + rows]) for a in range(0, len(yb), rows)]
        cached, hits = _unpruned_pass(self.flat, {i for i, _ in self.at}, pieces)
        self.seen += len(yb)
        for i, name in self.at:
            self.layer(i, name, pieces, cached, hits, rows)

    def layer(self, i: int, name: str, pieces: list[tuple[torch.Tensor, torch.Tensor]],
              cached: list[dict[int, torch.Tensor]], hits: int, rows: int) -> None:
        """Every level of one layer on the batch, as many stacked per pass as ``max_images`` and the bound allow."""
        todo = [j for j, w in enumerate(self.masked[name]) if w is not None]
        for j in set(range(len(self.sparsities))) - set(todo):
            self.correct[name][j] += hits
        cap = self.max_images if self.limit is None else max(1, min(self.max_images, int(self.limit // self.sizes[i])))
        group = max(1, cap // rows)
        for start in range(0, len(todo), group):
            js = todo[start : start + group]
            for j, h in zip(js, _suffix_hits(self.flat, i, [self.masked[name][j] for j in js], pieces, cached)):
                self.correct[name][j] += h
            self.done += len(js)
            if self.progress:
                self.progress(self.done, self.total, name, self.sparsities[js[-1]])


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

    ``shard=(rank, world)`` takes every ``world``-th batch and ``reduce`` sums the counts (all-reduce under
    DDP). A layer's levels run stacked, at most ``max_images`` images per pass; ``max_pass_mb`` bounds the
    activation a pass starts from (8 MB on a CPU, where larger passes run slower per image).
    """
    names = _resolve(model, sparsities, layers)
    flat, modules = stages(model), prunable_modules(model)
    index = {id(m): i for i, (_, m) in enumerate(flat)}
    masked = _masked_levels(modules, names, sparsities)
    device = next(model.parameters()).device
    n_batches = _count(dataloader, max_batches)
    total = None if n_batches is None else n_batches * sum(w is not None for ws in masked.values() for w in ws)
    close: Callable[[], None] = lambda: None  # noqa: E731
    if progress is True:
        progress, close = _tqdm_progress(total)
    if max_pass_mb is None and device.type == "cpu":
        max_pass_mb = CPU_PASS_MB
    sweep = _Sweep(flat, sorted((index[id(modules[n])], n) for n in names), masked, sparsities, max_images,
                   None if max_pass_mb is None else max_pass_mb * 1e6, progress or None, total,
                   {n: [0] * len(sparsities) for n in names})
    rank, world = shard
    was_training = model.training
    model.eval()
    try:
        for b, (xb, yb) in enumerate(islice(dataloader, max_batches)):
            if b % world == rank:
                sweep.batch(model, xb.to(device), yb.to(device))
    finally:
        model.train(was_training)
        close()
    counts = torch.tensor([[sweep.seen, *sweep.correct[n]] for n in names], dtype=torch.float64)
    if reduce is not None:
        counts = reduce(counts)
    seen = int(counts[0, 0]) if len(names) else sweep.seen
    if seen == 0:
        raise ValueError("sensitivity_scan got an empty dataloader")
    return {n: [100.0 * float(c) / seen for c in counts[i, 1:]] for i, n in enumerate(names)}
