"""Which input channels of a conv stay (He et al., ICCV 2017): sampled regression rows, then LASSO or a control.

The LASSO weights one coefficient per input channel of the conv's output, so the channels whose
removal the remaining ones can best make up for are dropped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sample_positions(
    images: int, grid: int, per_image: int, samples: int | None, generator: torch.Generator
) -> torch.Tensor:
    """(images, p) distinct random output positions per image out of ``grid``, p = min(per_image, grid);
    -1 where a row is dropped to stay within ``samples``."""
    p = min(per_image, grid)
    idx = torch.stack([torch.randperm(grid, generator=generator)[:p] for _ in range(images)])
    if samples is not None and images * p > samples:
        drop = torch.randperm(images * p, generator=generator)[: images * p - samples]
        idx.view(-1)[drop] = -1
    return idx


def sample_rows(x: torch.Tensor, conv: nn.Conv2d, idx: torch.Tensor) -> torch.Tensor:
    """The rows of ``F.unfold(x, ...)`` for ``conv`` at output positions ``idx`` (-1: skipped), image-major.

    Only the sampled windows are gathered: unfolding whole maps would cost kh*kw times the activations.
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


def out_positions(x: torch.Tensor, conv: nn.Conv2d) -> int:
    """Output positions of ``conv`` on ``x``: the grid the sampled rows are drawn from."""
    sizes = [(d + 2 * p - dil * (k - 1) - 1) // s + 1
             for d, p, dil, k, s in zip(x.shape[-2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    return sizes[0] * sizes[1]


def channel_gram(x_unf: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G = Z^T Z (c x c) and b = Z^T y (c) of the LASSO design Z_i = vec(X_i W_i^T), never forming Z.

    Two (c kk)^2 products instead of an (M n) x c matrix; selection only ranks, so float32 products suffice.
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
    """A (r x c) and t with A^T A = G and A^T t = b, so ||t - A beta||^2 = ||y - Z beta||^2 - const."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small LAPACK calls of many short parallel steps run faster on one thread
    try:
        s, v = torch.linalg.eigh(g)
    finally:
        torch.set_num_threads(threads)
    good = s > s.max().clamp(min=0) * 1e-12
    s, v = s[good], v[:, good]
    root = s.sqrt()
    return (root[:, None] * v.T).numpy(), ((v.T @ b) / root).numpy()


def _lasso(a: np.ndarray, t: np.ndarray, alpha: float, model=None):
    """sklearn's LASSO at ``alpha``, warm-started from ``model``; returns it and its coefficients."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    if model is None:
        model = Lasso(alpha=alpha, fit_intercept=False, warm_start=True, max_iter=10_000, tol=1e-6)
    model.set_params(alpha=alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(a, t)
    return model, model.coef_.copy()


def _search(a: np.ndarray, t: np.ndarray, keep: int, hi: float, max_steps: int) -> tuple[float, np.ndarray, bool]:
    """Lambda doubled until at most ``keep`` betas are non-zero, then bisected until exactly ``keep`` are.

    Returns (lambda, betas, exact); when the search stalls (ties), the last lambda that left too many.
    """
    model, beta = _lasso(a, t, hi)
    lo, lo_beta, steps = 0.0, beta, 0
    while np.count_nonzero(beta) > keep and steps < max_steps:  # double
        lo, lo_beta = hi, beta
        hi *= 2
        model, beta = _lasso(a, t, hi, model)
        steps += 1
    at = hi
    while np.count_nonzero(beta) != keep and steps < max_steps and hi - lo > 1e-9 * hi:  # bisect
        at = (lo + hi) / 2
        model, beta = _lasso(a, t, at, model)
        if np.count_nonzero(beta) > keep:
            lo, lo_beta = at, beta
        elif np.count_nonzero(beta) < keep:
            hi = at
        steps += 1
    return (at, beta, True) if np.count_nonzero(beta) == keep else (lo, lo_beta, False)


@dataclass
class ChannelChoice:
    """The chosen channels, the LASSO coefficients, the paper's lambda, and whether the search stalled."""

    kept: torch.Tensor
    beta: torch.Tensor
    alpha: float
    fallback: bool


def select_channels(
    x_unf: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, keep: int, max_steps: int = 60
) -> ChannelChoice:
    """LASSO channel selection, lambda searched for exactly ``keep`` non-zero betas, via the c x c problem.

    If the search stalls (ties), the ``keep`` largest |beta| at the last lambda that left too many are taken.
    """
    n, c = weight.shape[:2]
    assert 1 <= keep < c, f"keep must be in [1, {c - 1}], got {keep}"
    assert x_unf.shape[1] == weight[0].numel() and y.shape == (x_unf.shape[0], n), "x_unf, weight and y disagree"
    g, b = (t.cpu() for t in channel_gram(x_unf, weight, y))  # the c x c problem is solved on the CPU
    a, t = equivalent_design(g, b)
    rows = a.shape[0]
    # sklearn scales the squared error by 1/(2 rows), the paper by 1/(2 M n): same minimiser when
    # lambda_paper = alpha_sklearn * rows / (M n)
    to_paper = rows / (x_unf.shape[0] * n)
    alpha_max = float(np.abs(b.numpy()).max()) / max(rows, 1)  # from here on every beta is zero
    if rows == 0 or alpha_max == 0:
        return ChannelChoice(_top(np.zeros(c), g, keep), torch.zeros(c), 0.0, True)
    alpha, beta, exact = _search(a, t, keep, alpha_max / 1024, max_steps)
    kept = torch.from_numpy(np.flatnonzero(beta)) if exact else _top(beta, g, keep)
    return ChannelChoice(kept, torch.from_numpy(beta).float(), alpha * to_paper, not exact)


def _top(beta: np.ndarray, g: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` largest |beta|; ties (e.g. zeros) go to the channels with more energy in Z."""
    order = np.lexsort((g.diagonal().numpy(), np.abs(beta)))[::-1]
    return torch.from_numpy(np.sort(order[:keep]).copy())


def choose_channels(selection: str, x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, keep: int,
                    producer: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float | None, str]:
    """The sorted input channels to keep, the LASSO's lambda (if it chose) and how they were chosen.

    ``lasso`` (He et al.), or the controls ``l1`` (Li et al. 2017) and ``random``."""
    if selection == "lasso":
        choice = select_channels(x, weight, y, keep)
        return choice.kept, choice.alpha, "fallback" if choice.fallback else "lasso"
    if selection == "l1":  # the producer's output filters (= this conv's input channels) of largest L1 norm
        norms = producer.abs().flatten(1).sum(1)
        return torch.argsort(norms, descending=True, stable=True)[:keep].sort().values.cpu(), None, "l1"
    return torch.randperm(weight.shape[1], generator=generator)[:keep].sort().values, None, "random"
