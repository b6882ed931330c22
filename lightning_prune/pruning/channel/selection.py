"""LASSO channel selection (He et al., ICCV 2017): which input channels of a conv to keep.

The LASSO weights one coefficient per input channel of the conv's output, so the channels whose
removal the remaining ones can best make up for are dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from lightning_prune.pruning.channel.ratios import check_keep


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
