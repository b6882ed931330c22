"""One profile of a model in the shape of results.json's ``profile`` object."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn

from lightning_prune.profiling.energy import measure_energy
from lightning_prune.profiling.runtime import measure_latency, measure_memory, sync, top_operators
from lightning_prune.profiling.static import count_macs, serialized_size_mb
from lightning_prune.pruning.layers import count_parameters, weight_sparsity


@dataclass
class ProfileSettings:
    """How long to measure: timed batches after warm-up, batches for the energy meter."""

    latency_batches: int = 10
    warmup_batches: int = 2
    energy_batches: int = 10

    def __post_init__(self) -> None:  # the options are typed where parsed
        assert min(self.latency_batches, self.energy_batches) >= 1 and self.warmup_batches >= 0, self


def take_batches(loader: Iterable, count: int, device: torch.device | str) -> list[torch.Tensor]:
    """The first ``count`` input batches, moved to the device once (cycling a short loader)."""
    batches = [x.to(device) for x, _ in islice(loader, count)]
    if not batches:
        raise ValueError("cannot profile on an empty dataloader")
    return [batches[i % len(batches)] for i in range(count)]


@torch.inference_mode()
def profile_model(
    model: nn.Module,
    batches: list[torch.Tensor],
    settings: ProfileSettings | None = None,
    macs_model: nn.Module | None = None,
) -> dict:
    """Size, parameters, sparsity, MACs, latency, memory, energy and top operators of ``model`` on ``batches``.

    ``macs_model``: the dense equivalent, for models torchprofile cannot trace (sparse COO weights).
    """
    settings = settings or ProfileSettings()
    device = batches[0].device
    model = model.to(device).eval()
    params, nonzero = count_parameters(model)
    latency, latency_std = measure_latency(model, batches, warmup=settings.warmup_batches)
    peak, avg = measure_memory(model, batches[0])
    energy, note = measure_energy(
        lambda: _forward(model, batches[0]),
        settings.energy_batches,
        device.index or 0 if device.type == "cuda" else None,
    )
    return {
        "model_size_mb": serialized_size_mb(model),
        "params": params,
        "nonzero_params": nonzero,
        "sparsity": weight_sparsity(model),
        "macs": count_macs(macs_model if macs_model is not None else model),
        "latency_ms": latency,
        "latency_ms_std": latency_std,
        "batch_size": int(batches[0].shape[0]),
        "batches": len(batches),
        "peak_memory_mb": peak,
        "avg_memory_mb": avg,
        "memory_device": "cuda" if device.type == "cuda" else "cpu",
        "energy_mj": energy,
        "energy_note": note,
        "operators": top_operators(model, batches[0]),
    }


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    model(x)
    sync(x.device)
