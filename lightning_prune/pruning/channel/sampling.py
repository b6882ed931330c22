"""Sampled rows of a conv's input windows: the regression data of channel selection (He et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def out_positions(x: torch.Tensor, conv: nn.Conv2d) -> int:
    h, w = x.shape[-2:]
    sizes = [
        (d + 2 * p - dil * (k - 1) - 1) // s + 1
        for d, p, dil, k, s in zip((h, w), conv.padding, conv.dilation, conv.kernel_size, conv.stride)
    ]
    return sizes[0] * sizes[1]
