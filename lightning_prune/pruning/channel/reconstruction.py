"""New weights after the cut: least squares for the kept channels, and the hidden linears' smallest weights zeroed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

HIDDEN_LINEAR = ("classifier.0", "classifier.3")


def columns(kept: torch.Tensor, kk: int) -> torch.Tensor:
    """The unfolded columns (channel-major, ``kk`` per channel) of the kept channels."""
    return (torch.as_tensor(kept)[:, None] * kk + torch.arange(kk)).reshape(-1)


def reconstruct_weight(
    x_unf: torch.Tensor, y: torch.Tensor, kept: torch.Tensor | Sequence[int], kernel_size: tuple[int, int]
) -> torch.Tensor:
    """Least-squares weights (n, keep, kh, kw) mapping the kept channels' inputs onto ``y``.

    float64 QR (gels, several times faster than gelsy); a tiny ridge where the kept inputs are rank-deficient.
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


def prune_linear(model: nn.Module, sparsity: float, names: Sequence[str] = HIDDEN_LINEAR) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude ``sparsity`` of each hidden linear layer's weights, in place; the keep-masks.

    On the plain weight, no ``weight_orig``: the checkpoint loads into a plain VGG and a resumed optimizer
    keeps its parameter order. The output layer stays dense: each row is one class.
    """
    assert 0 <= sparsity < 1, f"linear_sparsity must be in [0, 1), got {sparsity!r}"
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
def hold_zeros(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Re-zero pruned weights after an optimizer step (whatever the optimizer does to them)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        modules[name].weight.mul_(mask.to(modules[name].weight.device))
