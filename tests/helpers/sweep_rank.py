"""One rank of the sharded sensitivity sweep, in a module that imports no Lightning: ``mp.spawn`` re-imports it."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lightning_prune.models import VGG
from lightning_prune.pruning.sensitivity import sensitivity_scan


def sweep_rank(rank: int, port: int, model_state: dict, classifier: int, batches: list, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = VGG(10, [4] * 13, classifier)
    model.load_state_dict(model_state)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    out[rank] = sensitivity_scan(model, batches, [0.0, 0.5, 0.9], shard=(rank, 2), reduce=reduce)
    dist.destroy_process_group()
