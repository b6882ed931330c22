"""Channel pruning by LASSO selection and least-squares reconstruction (He et al., ICCV 2017).

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
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from lightning_prune.errors import ConfigError
from lightning_prune.models.vgg import VGG

Ratios = float | Mapping[str, float]


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


# --- validation ---------------------------------------------------------------------------------


def check_keep(keep: int, channels: int, option: str = "keep") -> None:
    """``keep`` must remove at least one channel and keep at least one."""
    if isinstance(keep, bool) or int(keep) != keep or not 1 <= keep < channels:
        raise ConfigError(f"{option} must be an integer in [1, {channels - 1}] (channels: {channels}), got {keep}")


def check_ratio(ratio: float, option: str = "ratios") -> None:
    """A keep ratio lies in the open interval (0, 1): 0 keeps nothing, 1 prunes nothing."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ConfigError(f"{option} must be a fraction of channels to keep in (0, 1), got {ratio!r}")


def prunable_convs(model: VGG) -> dict[str, int]:
    """Conv names whose input channels may be pruned, with their conv ordinal (all but the first)."""
    return {name: i for i, (name, _, _) in enumerate(model.conv_layers()) if i > 0}


def resolve_ratios(ratios: Ratios, model: VGG, option: str = "ratios") -> dict[int, float]:
    """Per conv ordinal, the fraction of its input channels to keep; one number applies to all."""
    names = prunable_convs(model)
    if isinstance(ratios, Mapping):
        unknown = [n for n in ratios if n not in names]
        if unknown:
            raise ConfigError(
                f"{option}: unknown layer {unknown[0]!r}; choose among {', '.join(names)} "
                "(the conv whose input channels are pruned; the first conv's RGB input is not)"
            )
        for name, r in ratios.items():
            check_ratio(r, f"{option}.{name}")
        return {names[n]: float(r) for n, r in ratios.items()}
    check_ratio(ratios, option)
    return {i: float(ratios) for i in names.values()}


def keep_count(ratio: float, channels: int) -> int:
    """Channels left by a keep ratio: rounded, at least one."""
    return min(channels, max(1, round(ratio * channels)))


# --- sampling -----------------------------------------------------------------------------------


def sample_positions(
    images: int, grid: int, per_image: int, samples: int | None, generator: torch.Generator
) -> torch.Tensor:
    """(images, p) distinct random output positions per image out of ``grid``, p = min(per_image, grid).

    Entries are -1 where a row is dropped to stay within ``samples`` (every image keeps p slots).
    """
    p = min(per_image, grid)
    idx = torch.stack([torch.randperm(grid, generator=generator)[:p] for _ in range(images)])
    if samples is not None and images * p > samples:
        drop = torch.randperm(images * p, generator=generator)[: images * p - samples]
        idx.view(-1)[drop] = -1
    return idx


def sample_rows(x: torch.Tensor, conv: nn.Conv2d, idx: torch.Tensor) -> torch.Tensor:
    """The rows of ``F.unfold(x, ...)`` for ``conv`` at output positions ``idx`` (-1: skipped), stacked.

    Row order is image-major, then the order within ``idx``; columns are unfold's channel-major
    (c, ky, kx), like the conv's flattened weight. Only the sampled windows are gathered: unfolding
    whole maps would cost kh*kw times the activations for the few positions actually used.
    """
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = conv.kernel_size, conv.dilation, conv.padding, conv.stride
    out_w = (x.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    image = torch.arange(idx.shape[0]).unsqueeze(1).expand_as(idx)
    valid = idx >= 0
    image, pos = image[valid], idx[valid]
    top = (pos // out_w) * sh
    left = (pos % out_w) * sw
    rows = top[:, None] + dh * torch.arange(kh)  # (S, kh) in padded coordinates
    cols = left[:, None] + dw * torch.arange(kw)  # (S, kw)
    padded = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # (N, H, W, c)
    windows = padded[image[:, None, None], rows[:, :, None], cols[:, None, :]]  # (S, kh, kw, c)
    return windows.permute(0, 3, 1, 2).reshape(len(pos), -1)


def _out_positions(x: torch.Tensor, conv: nn.Conv2d) -> int:
    h, w = x.shape[-2:]
    sizes = [
        (d + 2 * p - dil * (k - 1) - 1) // s + 1
        for d, p, dil, k, s in zip((h, w), conv.padding, conv.dilation, conv.kernel_size, conv.stride)
    ]
    return sizes[0] * sizes[1]


# --- selection and reconstruction ---------------------------------------------------------------


def channel_gram(x_unf: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G = Z^T Z (c x c) and b = Z^T y (c) of the LASSO design Z_i = vec(X_i W_i^T), never forming Z.

    G_ij = sum_{k,l} (X^T X)[(i,k),(j,l)] (W^T W)[(i,k),(j,l)]: two (c kk)^2 products instead of
    an (M n) x c matrix. Selection only ranks channels, so float32 products are precise enough.
    """
    n, c = weight.shape[:2]
    kk = weight[0, 0].numel()
    x = x_unf.float()  # the (c kk)^2 products in float32 (half the time); reductions in float64
    w = weight.reshape(n, c * kk).float()
    gram = (x.T @ x).double()
    gram.mul_((w.T @ w).double())
    g = gram.reshape(c, kk, c, kk).sum((1, 3))
    del gram
    b = ((x.T @ y.float()).double() * w.T.double()).reshape(c, kk, n).sum((1, 2))
    return g, b


def equivalent_design(g: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A (r x c) and t with A^T A = G and A^T t = b, so ||t - A beta||^2 = ||y - Z beta||^2 - const.

    From G's eigen-decomposition; directions with (numerically) zero eigenvalue carry nothing,
    since b lies in G's range.
    """
    with _one_thread():
        s, v = torch.linalg.eigh(g)
    good = s > s.max().clamp(min=0) * 1e-12
    s, v = s[good], v[:, good]
    root = s.sqrt()
    a = root[:, None] * v.T
    t = (v.T @ b) / root
    return a.numpy(), t.numpy()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Small LAPACK calls made of many short parallel steps run faster on one thread (and far
    faster when other processes share the cores: every step waits for the slowest thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _lasso(a: np.ndarray, t: np.ndarray, alpha: float, model=None):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    if model is None:
        model = Lasso(alpha=alpha, fit_intercept=False, warm_start=True, max_iter=10_000, tol=1e-6)
    model.set_params(alpha=alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(a, t)
    return model, model.coef_.copy()


@dataclass
class Selection:
    """The chosen channels, the LASSO coefficients, the paper's lambda, and whether the search stalled."""

    kept: torch.Tensor
    beta: torch.Tensor
    alpha: float
    fallback: bool


def channel_selection(
    x_unf: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of ``keep`` input channels and the LASSO coefficients beta that chose them.

    ``x_unf`` (M, c kh kw) in unfold's channel-major order, ``weight`` (n, c, kh, kw), ``y`` (M, n).
    See :func:`select_channels`.
    """
    sel = select_channels(x_unf, weight, y, keep)
    return sel.kept, sel.beta


def select_channels(
    x_unf: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, keep: int, max_steps: int = 60
) -> Selection:
    """LASSO channel selection with a lambda search for exactly ``keep`` non-zero betas.

    Minimises (1/2N) ||y - sum_i beta_i X_i W_i^T||^2 + lambda ||beta||_1 (N = M n) through the
    equivalent c x c problem: lambda is doubled until at most ``keep`` betas are non-zero, then
    bisected until exactly ``keep`` are. If the search stalls (ties), the ``keep`` largest |beta|
    at the last lambda that left too many are taken.
    """
    n, c = weight.shape[:2]
    check_keep(keep, c)
    if x_unf.shape[1] != weight[0].numel() or y.shape != (x_unf.shape[0], n):
        raise ValueError(f"shapes do not match: x_unf {tuple(x_unf.shape)}, weight {tuple(weight.shape)}, "
                         f"y {tuple(y.shape)}")
    g, b = (t.cpu() for t in channel_gram(x_unf, weight, y))  # the c x c problem is solved on the CPU
    a, t = equivalent_design(g, b)
    rows = a.shape[0]
    # sklearn scales the squared error by 1/(2 rows), the paper by 1/(2 M n): same minimiser when
    # lambda_paper = alpha_sklearn * rows / (M n)
    to_paper = rows / (x_unf.shape[0] * n)
    alpha_max = float(np.abs(b.numpy()).max()) / max(rows, 1)  # from here on every beta is zero
    if rows == 0 or alpha_max == 0:
        return Selection(_top(np.zeros(c), g, keep), torch.zeros(c), 0.0, True)

    def count(beta: np.ndarray) -> int:
        return int(np.count_nonzero(beta))

    hi = alpha_max / 1024
    model, beta = _lasso(a, t, hi)
    lo, lo_beta = 0.0, beta
    steps = 0
    while count(beta) > keep and steps < max_steps:  # double
        lo, lo_beta = hi, beta
        hi *= 2
        model, beta = _lasso(a, t, hi, model)
        steps += 1
    at = hi
    while count(beta) != keep and steps < max_steps and hi - lo > 1e-9 * hi:  # bisect
        at = (lo + hi) / 2
        model, beta = _lasso(a, t, at, model)
        if count(beta) > keep:
            lo, lo_beta = at, beta
        elif count(beta) < keep:
            hi = at
        steps += 1
    if count(beta) == keep:
        return Selection(torch.from_numpy(np.flatnonzero(beta)), torch.from_numpy(beta).float(), at * to_paper, False)
    return Selection(_top(lo_beta, g, keep), torch.from_numpy(lo_beta).float(), lo * to_paper, True)


def _top(beta: np.ndarray, g: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` largest |beta|; ties (e.g. zeros) go to the channels with more energy in Z."""
    order = np.lexsort((g.diagonal().numpy(), np.abs(beta)))[::-1]
    return torch.from_numpy(np.sort(order[:keep]).copy())


def _columns(kept: torch.Tensor, kk: int) -> torch.Tensor:
    return (torch.as_tensor(kept)[:, None] * kk + torch.arange(kk)).reshape(-1)


def reconstruct_weight(
    x_unf: torch.Tensor, y: torch.Tensor, kept: torch.Tensor | Sequence[int], kernel_size: tuple[int, int]
) -> torch.Tensor:
    """Least-squares weights (n, keep, kh, kw) mapping the kept channels' inputs onto ``y``.

    Solved in float64 on all sampled rows by QR (LAPACK gels, several times faster than the
    pivoting gelsy). When the kept inputs are rank-deficient (dead channels, fewer rows than
    unknowns) or the solve breaks down, a tiny ridge term makes the problem well-posed.
    """
    kh, kw = kernel_size
    kept = torch.as_tensor(kept, dtype=torch.long)
    x = x_unf[:, _columns(kept, kh * kw)].double()
    target = y.double()
    norms = x.norm(dim=0)
    solution = None
    if x.shape[0] >= x.shape[1] and norms.min() > 1e-10 * norms.max():
        solution = torch.linalg.lstsq(x, target, driver="gels").solution
        if not torch.isfinite(solution).all():
            solution = None
    if solution is None:
        ridge = 1e-8 * float((norms * norms).mean()) + 1e-30
        x = torch.cat([x, math.sqrt(ridge) * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)])
        target = torch.cat([target, target.new_zeros(x.shape[1], target.shape[1])])
        solution = torch.linalg.lstsq(x, target, driver="gels").solution
    return solution.T.reshape(y.shape[1], len(kept), kh, kw).to(x_unf.dtype)


def relative_error(x_unf: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, kept: torch.Tensor) -> float:
    """||y - X_kept W^T|| / ||y|| for ``weight`` (n, keep, kh, kw) on the kept channels' columns."""
    kk = weight[0, 0].numel()
    x = x_unf[:, _columns(kept, kk)].float()
    residual = torch.addmm(y.float(), x, weight.reshape(weight.shape[0], -1).float().T, alpha=-1)
    return float(residual.norm() / y.float().norm().clamp(min=1e-30))


# --- surgery ------------------------------------------------------------------------------------


def remove_input_channels(
    model: VGG, conv: int, kept: torch.Tensor | Sequence[int], weight: torch.Tensor | None = None
) -> VGG:
    """A new VGG without the dropped input channels of conv ``conv`` (its ordinal, 1..12).

    The previous conv loses the matching filters (weight rows, bias) and its BatchNorm the
    matching weight, bias, running mean and var; this conv gets ``weight`` (n, keep, kh, kw) or,
    if None, its own weights on the kept channels. Module names stay the same.
    """
    convs = model.conv_layers()
    if not 1 <= conv < len(convs):
        raise ValueError(f"conv must be in [1, {len(convs) - 1}] (the first conv's RGB input stays), got {conv}")
    kept = torch.as_tensor(kept, dtype=torch.long).sort().values
    prev_name, _, prev_bn = convs[conv - 1]
    name, layer, _ = convs[conv]
    if len(kept) == 0 or kept.unique().numel() != len(kept) or int(kept[-1]) >= layer.in_channels:
        raise ValueError(f"kept must be distinct input channels of {name} (< {layer.in_channels}), got {kept.tolist()}")
    if weight is not None and tuple(weight.shape) != (layer.out_channels, len(kept), *layer.kernel_size):
        raise ValueError(f"weight for {name} must have shape {(layer.out_channels, len(kept), *layer.kernel_size)}, "
                         f"got {tuple(weight.shape)}")
    bn_name = next(n for n, m in model.named_modules() if m is prev_bn)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key in (f"{prev_name}.weight", f"{prev_name}.bias", *(f"{bn_name}.{s}" for s in
                                                              ("weight", "bias", "running_mean", "running_var"))):
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


# --- the whole network --------------------------------------------------------------------------


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
) -> tuple[VGG, list[LayerReport]]:
    """Prune the input channels of every conv named in ``ratios``, front to back; returns a new VGG.

    Per layer, up to ``positions`` random output positions per calibration image (the paper
    uses 10), at most ``samples`` rows in all. Conv i's inputs come from the pruned network, its
    targets from the original one. The original model is left untouched.
    """
    if isinstance(samples, bool) or (samples is not None and samples < 1):
        raise ConfigError(f"samples must be a positive integer or null, got {samples}")
    if isinstance(positions, bool) or positions < 1:
        raise ConfigError(f"positions must be a positive integer, got {positions}")
    if any(n.endswith("_orig") for n, _ in model.named_parameters()):
        raise ConfigError("channel pruning needs plain weights; the model carries pruning masks")
    keep_ratio = resolve_ratios(ratios, model)
    was_training = model.training
    model.eval()
    original = _blocks(model)
    convs = model.conv_layers()
    per_image = min(positions, math.ceil(samples / images.shape[0])) if samples else positions
    generator = torch.Generator().manual_seed(seed)
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
                idx = sample_positions(images.shape[0], _out_positions(x_orig, conv), per_image, samples, generator)
                w = conv.weight.detach()
                y = sample_rows(x_orig, conv, idx) @ w.reshape(w.shape[0], -1).T  # original output, no bias
                x = sample_rows(x_pruned, conv, idx)
                sel = select_channels(x, w, y, keep)
                kept = sel.kept
                new_w = reconstruct_weight(x, y, kept, conv.kernel_size)
                reports.append(LayerReport(
                    name, conv.in_channels, keep, x.shape[0], sel.alpha, "fallback" if sel.fallback else "lasso",
                    relative_error(x, y, w[:, kept], kept), relative_error(x, y, new_w, kept), kept.tolist(),
                    time.perf_counter() - start,
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


# --- the classifier -----------------------------------------------------------------------------

HIDDEN_LINEAR = ("classifier.0", "classifier.3")


def check_linear_sparsity(sparsity: float | None, option: str = "linear_sparsity") -> None:
    if sparsity is not None and (isinstance(sparsity, bool) or not 0 <= sparsity < 1):
        raise ConfigError(f"{option} must be a fraction of weights to zero in [0, 1) or null, got {sparsity!r}")


def prune_linear(model: nn.Module, sparsity: float, names: Sequence[str] = HIDDEN_LINEAR) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude ``sparsity`` of each hidden linear layer's weights, in place.

    The mask is ``prune.l1_unstructured``'s, but applied to the plain weight: no ``weight_orig``
    (the checkpoint loads into a plain VGG) and no re-registration, which would move ``weight``
    after ``bias`` and misalign a resumed optimizer. :func:`apply_masks` keeps the zeros through
    fine-tuning. The output layer stays dense: it is small and each of its rows is one class.
    Returns the keep-masks.
    """
    check_linear_sparsity(sparsity)
    modules = dict(model.named_modules())
    masks = {}
    for name in names:
        weight = modules[name].weight
        mask = prune.L1Unstructured(amount=sparsity).compute_mask(weight.detach(), torch.ones_like(weight))
        with torch.no_grad():
            weight.mul_(mask)
        masks[name] = mask.bool()
    return masks


def zero_masks(model: nn.Module, names: Sequence[str] = HIDDEN_LINEAR) -> dict[str, torch.Tensor]:
    """The keep-masks of linear layers pruned earlier, read back from their zeros (resumed fits)."""
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach() != 0 for name in names}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Re-zero pruned weights after an optimizer step (whatever the optimizer does to them)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        modules[name].weight.mul_(mask.to(modules[name].weight.device))


# --- a parameter budget -------------------------------------------------------------------------


def vgg_parameter_count(channels: Sequence[int], num_classes: int, classifier_width: int) -> int:
    """Parameters of ``vgg16_bn(num_classes, channels, classifier_width=...)``, from shapes alone.

    Each conv has a 3x3 weight and a bias, each BatchNorm a weight and a bias (running statistics
    are buffers); the classifier takes the last conv's 1x1 map. Cheap enough to search widths with.
    """
    total, in_ch = 0, 3
    for out_ch in channels:
        total += in_ch * out_ch * 9 + out_ch + 2 * out_ch
        in_ch = out_ch
    w = classifier_width
    return total + (in_ch * w + w) + (w * w + w) + (w * num_classes + num_classes)


def zeroed_linear_weights(channels: Sequence[int], classifier_width: int, linear_sparsity: float | None) -> int:
    """Weights :func:`prune_linear` zeroes in ``HIDDEN_LINEAR`` (its rounding: ``round(amount * numel)``)."""
    if not linear_sparsity:
        return 0
    sizes = (channels[-1] * classifier_width, classifier_width * classifier_width)
    return sum(round(linear_sparsity * n) for n in sizes)


def check_target_sparsity(target: float | None, option: str = "target_sparsity") -> None:
    """A share of parameters to remove lies in (0, 1): 0 removes nothing, 1 would remove everything."""
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1):
        raise ConfigError(f"{option} must be a fraction of the dense model's parameters to remove in (0, 1) "
                          f"or null, got {target!r}")


def narrow_channels(ratios: Mapping[int, float], channels: Sequence[int]) -> list[int]:
    """The widths :func:`prune_channels` leaves: keeping ratio r of conv i's inputs narrows conv i-1."""
    narrow = list(channels)
    for i, r in ratios.items():
        narrow[i - 1] = keep_count(r, channels[i - 1])
    return narrow


def removed_share(
    ratios: Mapping[int, float], channels: Sequence[int], num_classes: int, classifier_width: int,
    linear_sparsity: float | None,
) -> float:
    """Fraction of the dense model's parameters gone after channel pruning and zeroing the hidden linears."""
    narrow = narrow_channels(ratios, channels)
    kept = vgg_parameter_count(narrow, num_classes, classifier_width)
    kept -= zeroed_linear_weights(narrow, classifier_width, linear_sparsity)
    return 1 - kept / vgg_parameter_count(channels, num_classes, classifier_width)


def scale_ratios(ratios: Mapping[int, float], channels: Sequence[int], factor: float) -> dict[int, float]:
    """Every ratio times ``factor``, clipped to keep 1 to channels-1 channels (a conv with one input stays)."""
    scaled = {}
    for i, r in ratios.items():
        c = channels[i - 1]
        scaled[i] = r if c < 2 else min(max(r * factor, 1 / c), (c - 1) / c)
    return scaled


def ratios_for_target(
    ratios: Mapping[int, float],
    channels: Sequence[int],
    num_classes: int,
    classifier_width: int,
    linear_sparsity: float | None,
    target: float,
    steps: int = 100,
) -> dict[int, float]:
    """The configured keep ratios scaled by the largest common factor that removes >= ``target`` of the parameters.

    One factor keeps the configured per-layer profile (early convs keep more). The share removed
    only falls as the factor grows, so a bisection finds it; pure arithmetic on the widths, hence
    the same answer on every DDP rank. An unreachable target (even one channel per pruned conv
    removes too little) is an error naming the highest share reachable.
    """
    check_target_sparsity(target)

    def removed(factor: float) -> float:
        return removed_share(scale_ratios(ratios, channels, factor), channels, num_classes, classifier_width,
                             linear_sparsity)

    best = removed(0.0)
    if best < target:
        raise ConfigError(f"target_sparsity={target} cannot be reached with these ratios: keeping one channel per "
                          f"pruned conv removes at most {best:.4f} of the parameters; lower target_sparsity, prune "
                          "more convs (ratios) or raise linear_sparsity")
    lo = 0.0
    hi = max((channels[i - 1] - 1) / channels[i - 1] / r for i, r in ratios.items()) if ratios else 1.0
    if removed(hi) >= target:  # even the widest clipped widths meet it
        return scale_ratios(ratios, channels, hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if removed(mid) >= target:
            lo = mid
        else:
            hi = mid
    return scale_ratios(ratios, channels, lo)
