"""Channel pruning of the whole network, conv by conv (He et al., ICCV 2017), and the surgery that narrows it.

Each conv's inputs come from the network pruned so far, its targets from the original one, so errors do
not pile up. Never pruned: the first conv's RGB input and the last conv's outputs (no conv refits them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lightning_prune.models.vgg import VGG
from lightning_prune.names import SELECTIONS
from lightning_prune.pruning.channel.budget import Ratios, keep_count, resolve_ratios
from lightning_prune.pruning.channel.reconstruction import reconstruct_weight, relative_error
from lightning_prune.pruning.channel.selection import choose_channels, out_positions, sample_positions, sample_rows


def remove_input_channels(
    model: VGG, conv: int, kept: torch.Tensor | Sequence[int], weight: torch.Tensor | None = None
) -> VGG:
    """A new VGG without the dropped input channels of conv ``conv`` (its ordinal, 1..12), same module names.

    The previous conv and its BatchNorm lose the matching outputs; this conv gets ``weight`` or its own.
    """
    convs = model.conv_layers()
    assert 1 <= conv < len(convs), f"conv must be in [1, {len(convs) - 1}] (the RGB input stays), got {conv}"
    kept = torch.as_tensor(kept, dtype=torch.long).sort().values
    prev_name, _, prev_bn = convs[conv - 1]
    name, layer, _ = convs[conv]
    assert len(kept) and kept.unique().numel() == len(kept) and int(kept[-1]) < layer.in_channels, kept.tolist()
    assert weight is None or tuple(weight.shape) == (layer.out_channels, len(kept), *layer.kernel_size)
    bn_name = next(n for n, m in model.named_modules() if m is prev_bn)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key in (f"{prev_name}.weight", f"{prev_name}.bias",
                *(f"{bn_name}.{s}" for s in ("weight", "bias", "running_mean", "running_var"))):
        if key in state:
            state[key] = state[key][kept].clone()
    ref = state[f"{name}.weight"]
    state[f"{name}.weight"] = (ref[:, kept] if weight is None else weight.detach()).to(ref).clone()
    channels = list(model.channels)
    channels[conv - 1] = len(kept)
    with torch.device("meta"):
        narrow = VGG(model.num_classes, channels, model.classifier_width)
    narrow.load_state_dict(state, assign=True)
    return narrow.train(model.training)


@dataclass
class LayerReport:
    """What pruning one conv's inputs did: counts, the lambda found, and the fit on sampled rows."""

    name: str
    channels: int
    kept: int
    samples: int
    alpha: float | None  # LASSO weight in the paper's objective; None when the layer was left alone
    selection: str  # "lasso" (exact count found), "fallback" (top |beta|), "l1", "random" or "none"
    error_pruned: float  # relative error ||Y - Y_hat|| / ||Y|| with the kept channels' original weights
    error_reconstructed: float  # the same after the least-squares refit
    kept_indices: list[int]
    seconds: float = 0.0  # sampling, selection and reconstruction of this layer

    def row(self) -> dict:
        return asdict(self)


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


@dataclass
class _Sampling:
    """How one conv's regression rows are drawn and its channels chosen and refit (fixed for the whole pass)."""

    per_image: int
    samples: int | None
    positions: torch.Generator
    chooser: torch.Generator  # random selection: apart from the sampled positions
    selection: str
    reconstruct: bool


def _prune_conv(pruned: VGG, i: int, name: str, conv: nn.Conv2d, keep: int, x_orig: torch.Tensor,
                x_pruned: torch.Tensor, how: _Sampling) -> tuple[VGG, torch.Tensor, LayerReport]:
    """Conv ``i``: kept inputs chosen and refit on rows sampled from both networks, then cut out of ``pruned``."""
    start = time.perf_counter()
    idx = sample_positions(x_orig.shape[0], out_positions(x_orig, conv), how.per_image, how.samples, how.positions)
    w = conv.weight.detach()
    y = sample_rows(x_orig, conv, idx) @ w.reshape(w.shape[0], -1).T  # original output, no bias
    x = sample_rows(x_pruned, conv, idx)
    producer = pruned.conv_layers()[i - 1][1].weight.detach()
    kept, alpha, chosen_by = choose_channels(how.selection, x, w, y, keep, producer, how.chooser)
    new_w = reconstruct_weight(x, y, kept, conv.kernel_size) if how.reconstruct else w[:, kept].clone()
    report = LayerReport(name, conv.in_channels, keep, x.shape[0], alpha, chosen_by,
                         relative_error(x, y, w[:, kept], kept), relative_error(x, y, new_w, kept), kept.tolist(),
                         time.perf_counter() - start)
    del x, y
    return remove_input_channels(pruned, i, kept, new_w), x_pruned[:, kept], report


def prune_channels(model: VGG, images: torch.Tensor, ratios: Ratios, samples: int | None = 5000, positions: int = 10,
                   seed: int = 0, progress: bool = False, selection: str = "lasso", reconstruct: bool = True,
                   ) -> tuple[VGG, list[LayerReport]]:
    """Prune the input channels of every conv named in ``ratios``, front to back; a new VGG (``model`` untouched).

    Per layer, up to ``positions`` output positions per image (the paper: 10), at most ``samples`` rows.
    """
    assert selection in SELECTIONS and (samples is None or samples >= 1) and positions >= 1
    if any(n.endswith("_orig") for n, _ in model.named_parameters()):
        raise ValueError("channel pruning needs plain weights; the model carries pruning masks")
    keep_ratio = resolve_ratios(ratios, model)
    was_training = model.training
    model.eval()
    original, convs = _blocks(model), model.conv_layers()
    per_image = min(positions, math.ceil(samples / images.shape[0])) if samples else positions
    how = _Sampling(per_image, samples, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1),
                    selection, reconstruct)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(convs), desc="channel pruning", unit="conv", disable=not progress, dynamic_ncols=True)
    reports: list[LayerReport] = []
    x_orig = x_pruned = images
    pruned = model
    try:
        for i, (name, conv, _) in enumerate(convs):
            keep = keep_count(keep_ratio[i], conv.in_channels) if i in keep_ratio else conv.in_channels
            if keep < conv.in_channels:
                bar.set_postfix_str(f"{name}: {conv.in_channels} -> {keep} channels")
                pruned, x_pruned, report = _prune_conv(pruned, i, name, conv, keep, x_orig, x_pruned, how)
                reports.append(report)
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


def summary(layers: list[dict], seconds: float, dense_params: int, total: int, nonzero: int) -> str:
    """What the pruning did to each conv and to the parameter count, for the log."""
    lines = [f"  {r['name']:<12} {r['channels']:>4} -> {r['kept']:<4} rel. error {r['error_pruned']:.3f} -> "
             f"{r['error_reconstructed']:.3f} (kept weights -> refit; {r['selection']}, {r['seconds']:.1f} s)"
             for r in layers if r["selection"] != "none"]
    return ("Channel pruning, input channels per conv:\n" + "\n".join(lines)
            + f"\n  {seconds:.1f} s; parameters {dense_params:,} -> {total:,} ({nonzero:,} non-zero), "
            f"{100 * (1 - nonzero / dense_params):.1f} % fewer")
