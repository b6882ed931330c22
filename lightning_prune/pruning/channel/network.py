"""Channel pruning of the whole network, conv by conv (He et al., ICCV 2017).

For each conv, the inputs X come from the network pruned so far and the targets Y (the conv's
output before BatchNorm, less its bias) from the original network, so errors do not pile up from
layer to layer. Removing input channels of conv ``i`` removes the matching output channels of
conv ``i-1`` and its BatchNorm, so the result is a genuinely narrower, dense VGG.

Never pruned: the RGB input of the first conv, and the outputs of the last conv (they are the
classifier's input features, which no conv downstream could reconstruct).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lightning_prune.models.vgg import VGG
from lightning_prune.names import SELECTIONS
from lightning_prune.pruning.channel.linear import prune_linear
from lightning_prune.pruning.channel.ratios import Ratios, keep_count, resolve_ratios
from lightning_prune.pruning.channel.reconstruction import reconstruct_weight, relative_error
from lightning_prune.pruning.channel.sampling import out_positions, sample_positions, sample_rows
from lightning_prune.pruning.channel.selection import select_channels
from lightning_prune.pruning.channel.surgery import remove_input_channels


@dataclass
class LayerReport:
    """What pruning one conv's inputs did: counts, the lambda found, and the fit on sampled rows."""

    name: str
    channels: int
    kept: int
    samples: int
    alpha: float | None  # LASSO weight in the paper's objective; None when the layer was left alone
    selection: str  # "lasso" (exact count found), "fallback" (top |beta|) or "none"
    error_pruned: float  # relative error ||Y - Y_hat|| / ||Y|| with the kept channels' original weights
    error_reconstructed: float  # the same after the least-squares refit
    kept_indices: list[int]
    seconds: float = 0.0  # sampling, selection and reconstruction of this layer

    def row(self) -> dict:
        return asdict(self)


def choose_channels(selection: str, x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, keep: int,
                    producer: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float | None, str]:
    """The sorted input channels to keep, the LASSO's lambda (if it chose) and how they were chosen."""
    if selection == "lasso":
        sel = select_channels(x, weight, y, keep)
        return sel.kept, sel.alpha, "fallback" if sel.fallback else "lasso"
    if selection == "l1":  # the producer's output filters (= this conv's input channels) of largest L1 norm
        norms = producer.abs().flatten(1).sum(1)
        return torch.argsort(norms, descending=True, stable=True)[:keep].sort().values.cpu(), None, "l1"
    return torch.randperm(weight.shape[1], generator=generator)[:keep].sort().values, None, "random"


def _blocks(model: VGG) -> list[nn.Sequential]:
    """``features`` cut before every conv: block i is conv i, its BN, ReLU and any pool."""
    mods = list(model.features)
    starts = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)] + [len(mods)]
    return [nn.Sequential(*mods[a:b]) for a, b in zip(starts, starts[1:])]


@torch.inference_mode()
def _forward_chunked(block: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``block(x)`` a chunk at a time into one preallocated tensor, channels-last (faster on CPU)."""
    x = x.contiguous(memory_format=torch.channels_last)
    out = None
    for s in range(0, x.shape[0], chunk):
        y = block(x[s : s + chunk])
        if out is None:
            out = y.new_empty((x.shape[0], *y.shape[1:])).contiguous(memory_format=torch.channels_last)
        out[s : s + chunk] = y
    return out


def prune_channels(
    model: VGG,
    images: torch.Tensor,
    ratios: Ratios,
    samples: int | None = 5000,
    positions: int = 10,
    seed: int = 0,
    progress: bool = False,
    selection: str = "lasso",
    reconstruct: bool = True,
) -> tuple[VGG, list[LayerReport]]:
    """Prune the input channels of every conv named in ``ratios``, front to back; returns a new VGG.

    Per layer, up to ``positions`` random output positions per calibration image (the paper
    uses 10), at most ``samples`` rows in all. Conv i's inputs come from the pruned network, its
    targets from the original one. ``selection``: ``lasso`` (He et al.), or the controls ``l1`` (the
    producer's filters of largest L1 norm, Li et al. 2017) and ``random``; ``reconstruct``: refit the
    kept channels' weights by least squares (else they keep their original weights). The original
    model is left untouched.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if isinstance(samples, bool) or (samples is not None and samples < 1):
        raise ValueError(f"samples must be a positive integer or null, got {samples}")
    if isinstance(positions, bool) or positions < 1:
        raise ValueError(f"positions must be a positive integer, got {positions}")
    if any(n.endswith("_orig") for n, _ in model.named_parameters()):
        raise ValueError("channel pruning needs plain weights; the model carries pruning masks")
    keep_ratio = resolve_ratios(ratios, model)
    was_training = model.training
    model.eval()
    original = _blocks(model)
    convs = model.conv_layers()
    per_image = min(positions, math.ceil(samples / images.shape[0])) if samples else positions
    generator = torch.Generator().manual_seed(seed)
    chooser = torch.Generator().manual_seed(seed + 1)  # random selection: apart from the sampled positions
    bar = _bar(len(convs), progress)
    reports: list[LayerReport] = []
    x_orig = x_pruned = images
    pruned = model
    try:
        for i, (name, conv, _) in enumerate(convs):
            keep = keep_count(keep_ratio[i], conv.in_channels) if i in keep_ratio else conv.in_channels
            if keep < conv.in_channels:
                bar.set_postfix_str(f"{name}: {conv.in_channels} -> {keep} channels")
                start = time.perf_counter()
                idx = sample_positions(images.shape[0], out_positions(x_orig, conv), per_image, samples, generator)
                w = conv.weight.detach()
                y = sample_rows(x_orig, conv, idx) @ w.reshape(w.shape[0], -1).T  # original output, no bias
                x = sample_rows(x_pruned, conv, idx)
                producer = pruned.conv_layers()[i - 1][1].weight.detach()
                kept, alpha, how = choose_channels(selection, x, w, y, keep, producer, chooser)
                new_w = reconstruct_weight(x, y, kept, conv.kernel_size) if reconstruct else w[:, kept].clone()
                reports.append(LayerReport(
                    name, conv.in_channels, keep, x.shape[0], alpha, how, relative_error(x, y, w[:, kept], kept),
                    relative_error(x, y, new_w, kept), kept.tolist(), time.perf_counter() - start,
                ))
                del x, y
                pruned = remove_input_channels(pruned, i, kept, new_w)
                x_pruned = x_pruned[:, kept]
            elif i > 0:
                reports.append(LayerReport(name, conv.in_channels, keep, 0, None, "none", 0.0, 0.0,
                                           list(range(keep))))
            x_pruned = _forward_chunked(_blocks(pruned)[i], x_pruned)
            x_orig = _forward_chunked(original[i], x_orig)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return pruned.train(was_training), reports


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="channel pruning", unit="conv", disable=not enabled, dynamic_ncols=True)


def prune_vgg(model: VGG, images: torch.Tensor, ratios: Ratios, samples: int | None = 5000, positions: int = 10,
              seed: int = 0, linear_sparsity: float | None = None, progress: bool = False, selection: str = "lasso",
              reconstruct: bool = True) -> tuple[VGG, list[LayerReport], float]:
    """:func:`prune_channels`, then the hidden linears' smallest ``linear_sparsity`` zeroed; also the seconds taken."""
    start = time.perf_counter()
    narrow, reports = prune_channels(model, images, ratios, samples, positions, seed, progress, selection, reconstruct)
    if linear_sparsity:
        prune_linear(narrow, linear_sparsity)
    return narrow, reports, time.perf_counter() - start


def summary(layers: list[dict], seconds: float, dense_params: int, total: int, nonzero: int) -> str:
    """What the pruning did to each conv and to the parameter count, for the log."""
    lines = [f"  {r['name']:<12} {r['channels']:>4} -> {r['kept']:<4} rel. error {r['error_pruned']:.3f} -> "
             f"{r['error_reconstructed']:.3f} (kept weights -> refit; {r['selection']}, {r['seconds']:.1f} s)"
             for r in layers if r["selection"] != "none"]
    return ("Channel pruning, input channels per conv:\n" + "\n".join(lines)
            + f"\n  {seconds:.1f} s; parameters {dense_params:,} -> {total:,} ({nonzero:,} non-zero), "
            f"{100 * (1 - nonzero / dense_params):.1f} % fewer")
