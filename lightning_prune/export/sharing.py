"""Weight sharing on the int8 grid (Deep Compression's second stage, Han et al., ICLR 2016), for the download.

Each layer's non-zero int8 values move to the nearest of ``2**bits - 1`` levels (1-D k-means on its
histogram); zeros stay zeros, and LZMA then codes a weight in about ``bits`` bits instead of 7.8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SHARE_BITS = (0, 2, 3, 4, 5, 6, 7)  # 0: no sharing


def shared_levels(values: np.ndarray, bits: int, iterations: int = 50) -> np.ndarray:
    """The ``2**bits - 1`` non-zero integer levels that k-means finds for the non-zero int8 ``values``."""
    nonzero = values[values != 0].astype(np.int64)
    k = 2 ** bits - 1
    levels = np.unique(nonzero)
    if len(levels) <= k:
        return levels.astype(np.int8)
    grid = np.arange(-127, 128)
    counts = np.bincount(nonzero + 127, minlength=255).astype(np.float64)
    centers = np.quantile(nonzero, (np.arange(k) + 0.5) / k).astype(np.float64)
    for _ in range(iterations):
        nearest = np.abs(grid[:, None] - centers[None, :]).argmin(1)
        mass = np.bincount(nearest, weights=counts, minlength=k)
        moved = np.bincount(nearest, weights=counts * grid, minlength=k)
        new = np.where(mass > 0, moved / np.maximum(mass, 1e-12), centers)
        if np.allclose(new, centers):
            break
        centers = new
    levels = np.clip(np.round(centers), -127, 127)
    levels[levels == 0] = np.where(centers[levels == 0] < 0, -1, 1)  # a kept weight never becomes a zero
    return np.unique(levels).astype(np.int8)


def share(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (int8) with every non-zero replaced by its nearest shared level; zeros unchanged."""
    levels = shared_levels(values, bits).astype(np.int64)
    out = values.astype(np.int64)
    mask = out != 0
    out[mask] = levels[np.abs(out[mask][:, None] - levels[None, :]).argmin(1)]
    return out.astype(np.int8)


def share_onnx_weights(path: Path, bits: int) -> dict[str, Any]:
    """Rewrite the int8 conv/linear weights of the QDQ model at ``path`` in place; returns what it did."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    layers = distinct = 0
    for tensor in model.graph.initializer:
        if not tensor.name.endswith("_quantized") or tensor.data_type != onnx.TensorProto.INT8 or len(tensor.dims) < 2:
            continue
        values = numpy_helper.to_array(tensor)
        shared = share(values, bits)
        tensor.CopyFrom(numpy_helper.from_array(shared, tensor.name))
        layers += 1
        distinct = max(distinct, len(np.unique(shared)))
    onnx.save(model, str(path))
    return {"bits": bits, "layers": layers, "max_distinct_values": distinct}
