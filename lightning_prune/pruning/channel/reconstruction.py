"""Least-squares reconstruction: new weights for the kept channels that best reproduce the conv's output."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def columns(kept: torch.Tensor, kk: int) -> torch.Tensor:
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
    x = x_unf[:, columns(kept, kh * kw)].double()
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
    x = x_unf[:, columns(kept, kk)].float()
    residual = torch.addmm(y.float(), x, weight.reshape(weight.shape[0], -1).float().T, alpha=-1)
    return float(residual.norm() / y.float().norm().clamp(min=1e-30))
